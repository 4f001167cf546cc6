from __future__ import annotations

import ipaddress

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from imagegate.cluster import tls


@pytest.fixture(scope="module")
def ca() -> tls.CertificateAuthority:
    return tls.CertificateAuthority.create("test-ca")


def test_server_certificate_is_issued_by_the_ca_with_the_names_asked_for(
    ca: tls.CertificateAuthority,
) -> None:
    pair = ca.issue("webhook", dns_names=["webhook.ns.svc"], ip_addresses=["127.0.0.1"])
    cert = pair.certificate
    cert.verify_directly_issued_by(ca.certificate)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["webhook.ns.svc"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False


def test_client_certificate_carries_groups_as_organizations(ca: tls.CertificateAuthority) -> None:
    cert = ca.issue(
        "admin", organizations=["system:masters"], server=False, client=True
    ).certificate
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == (
        "system:masters"
    )
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_a_certificate_from_another_ca_does_not_verify(ca: tls.CertificateAuthority) -> None:
    other = tls.CertificateAuthority.create("other-ca")
    with pytest.raises((ValueError, TypeError)):
        other.issue("x").certificate.verify_directly_issued_by(ca.certificate)


def test_ca_round_trips_through_pem(ca: tls.CertificateAuthority) -> None:
    again = tls.CertificateAuthority.from_pem(ca.cert_pem, ca.key_pem)
    again.issue("leaf").certificate.verify_directly_issued_by(ca.certificate)


def test_leaf_never_outlives_its_ca() -> None:
    import datetime

    short = tls.CertificateAuthority.create("short", validity=datetime.timedelta(days=1))
    leaf = short.issue("leaf", validity=datetime.timedelta(days=365)).certificate
    assert leaf.not_valid_after_utc <= short.certificate.not_valid_after_utc
