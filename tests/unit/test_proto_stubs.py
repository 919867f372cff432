"""The committed stubs are exactly what ``python -m proto.generate`` makes from the .proto."""

from __future__ import annotations

from pathlib import Path

from proto import istio_ca_pb2
from proto.generate import STUB_NAMES, generate

REPO = Path(__file__).resolve().parents[2]


def test_committed_stubs_match_the_proto(tmp_path):
    generate(tmp_path)
    for name in STUB_NAMES:
        fresh = (tmp_path / "proto" / name).read_text()
        committed = (REPO / "proto" / name).read_text()
        assert fresh == committed, f"proto/{name} drifted: run `make proto`"


def test_wire_names_and_field_numbers_are_istios():
    file = istio_ca_pb2.DESCRIPTOR
    assert file.package == "istio.v1.auth"
    service = file.services_by_name["IstioCertificateService"]
    assert (
        service.methods_by_name["CreateCertificate"].full_name
        == "istio.v1.auth.IstioCertificateService.CreateCertificate"
    )
    request = file.message_types_by_name["IstioCertificateRequest"].fields_by_name
    assert (request["csr"].number, request["validity_duration"].number, request["metadata"].number) == (1, 3, 4)
    assert request["metadata"].message_type.full_name == "google.protobuf.Struct"
    response = file.message_types_by_name["IstioCertificateResponse"].fields_by_name
    assert response["cert_chain"].number == 1 and response["cert_chain"].is_repeated
