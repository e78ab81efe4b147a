"""The single source of truth for the information elements espmeter exports.

`espmeter.iespec` defines every IE (python-ipfix `name(pen/id)<type>[size]` lines plus RFC 5610
metadata); `records.yaml` says which IEs make each record. The exporter and the collector
dictionaries (`espmeter templates`) are both generated from these two files.
"""

from importlib import resources

IESPEC = "espmeter.iespec"
RECORDS = "records.yaml"


def read_text(name: str) -> str:
    """Read one of the packaged template files (works from a wheel as well as a checkout)."""
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")
