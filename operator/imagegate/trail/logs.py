"""Logging for `imagegate run`: text for people, or one JSON object per line for collectors.

The webhooks log one line per decision with the decision itself under `extra={"decision":
...}`; the JSON format puts it in the object, so a log pipeline can filter on
`decision.allowed == false` without parsing prose. Plain admissions are sampled
(`--log-admits`, admission/reviewers.py `DecisionLog`); the count line that stands for them
carries `admissions: {allowed, logged, seconds}`.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Any

FORMATS = ("text", "json")
#: Attributes of `extra` that become fields of the JSON line.
STRUCTURED_FIELDS = ("decision", "admissions")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in STRUCTURED_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, separators=(",", ":"))


def configure(log_format: str = "text", level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # kopf and aiohttp are chatty at INFO about their own machinery.
    for name in ("kopf", "aiohttp.access"):
        logging.getLogger(name).setLevel(logging.WARNING)
