"""Admission: the AdmissionReview wire models, the reviewers, their HTTPS server and webhook
configurations.
"""
