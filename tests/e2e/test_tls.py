"""TLS and mutual TLS with the official Python client: Propeller with `insecure: false`
dials with TLS (and, behind a mesh or with client certificates, mutual TLS)."""

from __future__ import annotations

import datetime
import ipaddress

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from flyteidl.admin import agent_pb2
from flyteidl.service import agent_pb2_grpc

from conftest import Agent, agent_binary


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn)).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def make_leaf(ca, cn, server):
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1)))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    server_ca, client_ca = make_ca("server CA"), make_ca("client CA")
    cert, key = make_leaf(server_ca, "localhost", server=True)
    client_cert, client_key = make_leaf(client_ca, "flytepropeller", server=False)
    files = {"cert": cert, "key": key, "client_ca": pem(client_ca[1])}
    paths = {k: d / f"{k}.pem" for k in files}
    for k, v in files.items():
        paths[k].write_bytes(v)
    return {"paths": paths, "server_ca": pem(server_ca[1]), "client_cert": client_cert, "client_key": client_key}


def list_agents(channel):
    return agent_pb2_grpc.AgentMetadataServiceStub(channel).ListAgents(agent_pb2.ListAgentsRequest(), timeout=5)


def test_tls_with_the_official_client(pki):
    p = pki["paths"]
    creds = grpc.ssl_channel_credentials(root_certificates=pki["server_ca"])
    a = Agent(agent_binary(), args=("--tls-cert", str(p["cert"]), "--tls-key", str(p["key"])), credentials=creds)
    try:
        assert {x.name for x in list_agents(a.channel).agents} == {"Test Async Agent", "Test Sync Agent"}
        with grpc.insecure_channel(a.address) as plain, pytest.raises(grpc.RpcError):
            list_agents(plain)
        assert "TLS" in a.logs()
    finally:
        assert a.stop() == 0


def test_mutual_tls_requires_the_client_certificate(pki):
    p = pki["paths"]
    args = ("--tls-cert", str(p["cert"]), "--tls-key", str(p["key"]), "--tls-client-ca", str(p["client_ca"]))
    creds = grpc.ssl_channel_credentials(root_certificates=pki["server_ca"], private_key=pki["client_key"],
                                         certificate_chain=pki["client_cert"])
    a = Agent(agent_binary(), args=args, credentials=creds)
    try:
        assert len(list_agents(a.channel).agents) == 2
        no_cert = grpc.ssl_channel_credentials(root_certificates=pki["server_ca"])
        with grpc.secure_channel(a.address, no_cert) as anonymous, pytest.raises(grpc.RpcError) as refused:
            list_agents(anonymous)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        assert a.stop() == 0
