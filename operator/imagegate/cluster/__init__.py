"""Running in a cluster: the kopf operator, certificates, credentials, policy resources and
status.
"""

from imagegate.cluster import lazypackages

# Before kopf or any module here imports `kubernetes` (lazypackages.py says why).
lazypackages.defer_all()
