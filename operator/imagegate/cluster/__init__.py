"""Running in a cluster: the kopf operator, certificates, credentials, policy resources and
status.
"""
