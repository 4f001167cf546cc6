"""The `imagegate` command line: run, check, audit, selftest, dev, testbed."""
