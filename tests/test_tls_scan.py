"""sslyze scans the running guard, as an auditor would: what its TLS endpoint offers, seen from outside."""

from __future__ import annotations

import pytest
from cryptography import x509
from sslyze import (CertificateInfoExtraArgument, ScanCommand, ScanCommandAttemptStatusEnum,
                    ScanCommandsExtraArguments, Scanner, ServerNetworkConfiguration, ServerNetworkLocation,
                    ServerScanRequest, ServerScanStatusEnum)

from tests.figures import FIGURES
from tests.guard import SERVICE_HOST

OLD_PROTOCOLS = {"ssl_2_0_cipher_suites", "ssl_3_0_cipher_suites", "tls_1_0_cipher_suites",
                 "tls_1_1_cipher_suites"}
COMMANDS = {ScanCommand.SSL_2_0_CIPHER_SUITES, ScanCommand.SSL_3_0_CIPHER_SUITES, ScanCommand.TLS_1_0_CIPHER_SUITES,
            ScanCommand.TLS_1_1_CIPHER_SUITES, ScanCommand.TLS_1_2_CIPHER_SUITES, ScanCommand.TLS_1_3_CIPHER_SUITES,
            ScanCommand.TLS_COMPRESSION, ScanCommand.SESSION_RENEGOTIATION, ScanCommand.CERTIFICATE_INFO,
            ScanCommand.HEARTBLEED, ScanCommand.OPENSSL_CCS_INJECTION}


@pytest.mark.filterwarnings("ignore:Parsed a serial number")  # in sslyze's own bundled trust stores
def test_sslyze_scan(guard):
    request = ServerScanRequest(
        server_location=ServerNetworkLocation(hostname=SERVICE_HOST, port=guard.port, ip_address="127.0.0.1"),
        network_configuration=ServerNetworkConfiguration(tls_server_name_indication=SERVICE_HOST),
        scan_commands=COMMANDS,
        scan_commands_extra_arguments=ScanCommandsExtraArguments(
            certificate_info=CertificateInfoExtraArgument(custom_ca_file=guard.cert_dir / "ca.crt")),
    )
    scanner = Scanner()
    scanner.queue_scans([request])
    (result,) = scanner.get_results()
    assert result.scan_status == ServerScanStatusEnum.COMPLETED, result.connectivity_error_trace
    scans = result.scan_result
    for command in COMMANDS:
        attempt = getattr(scans, command.value)
        assert attempt.status == ScanCommandAttemptStatusEnum.COMPLETED, (command, attempt.error_trace)

    for name in OLD_PROTOCOLS:
        assert getattr(scans, name).result.accepted_cipher_suites == [], name
    tls12 = [s.cipher_suite.openssl_name for s in scans.tls_1_2_cipher_suites.result.accepted_cipher_suites]
    tls13 = [s.cipher_suite.name for s in scans.tls_1_3_cipher_suites.result.accepted_cipher_suites]
    assert tls12 and tls13
    assert all(s.startswith("ECDHE-") and ("-GCM-" in s or "CHACHA20" in s) for s in tls12), tls12

    assert scans.tls_compression.result.supports_compression is False
    renegotiation = scans.session_renegotiation.result
    assert renegotiation.supports_secure_renegotiation is True  # so never the insecure (pre-RFC 5746) kind
    assert renegotiation.is_vulnerable_to_client_renegotiation_dos is False
    assert scans.heartbleed.result.is_vulnerable_to_heartbleed is False
    assert scans.openssl_ccs_injection.result.is_vulnerable_to_ccs_injection is False

    (deployment,) = scans.certificate_info.result.certificate_deployments
    custom = [r for r in deployment.path_validation_results if r.trust_store.path == guard.cert_dir / "ca.crt"]
    assert custom and custom[0].was_validation_successful, custom
    leaf = deployment.received_certificate_chain[0]
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName)
    assert SERVICE_HOST in names
    FIGURES.set("sslyze: accepted suites", f"TLS 1.2: {', '.join(tls12)}; TLS 1.3: {', '.join(tls13)}")
