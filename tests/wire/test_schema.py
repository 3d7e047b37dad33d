"""The checked-in Python modules of the wire schema are exactly what ``fedrl.proto`` compiles to."""

from pathlib import Path

import pytest
from grpc_tools import protoc

import fedrl.wire

WIRE = Path(fedrl.wire.__file__).parent
SRC = WIRE.parents[1]  # the folder that holds the fedrl package, so imports read `from fedrl.wire import ...`
GENERATED = ["fedrl_pb2.py", "fedrl_pb2.pyi", "fedrl_pb2_grpc.py"]


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory) -> Path:
    """The modules compiled afresh from the checked-in schema, with the command the schema names."""
    out = tmp_path_factory.mktemp("gen")
    args = [
        "protoc",
        f"-I{SRC}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        str(WIRE / "fedrl.proto"),
    ]
    assert protoc.main(args) == 0
    return out / "fedrl" / "wire"


@pytest.mark.parametrize("name", GENERATED)
def test_checked_in_module_matches_the_schema(regenerated, name):
    fresh = (regenerated / name).read_text()
    assert (WIRE / name).read_text() == fresh, (
        f"src/fedrl/wire/{name} is out of date with fedrl.proto; regenerate it with the command at the top of "
        "fedrl.proto"
    )


def test_deployed_agents_find_the_service_under_its_versioned_name():
    from fedrl.wire import fedrl_pb2

    assert fedrl_pb2.DESCRIPTOR.services_by_name["Federation"].full_name == "fedrl.v1.Federation"
