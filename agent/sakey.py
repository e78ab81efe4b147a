"""An SA's table key, one bytes object: its ident (addresses [+ ports] + SPI: 12, 16, 36 or 40 bytes),
then, when it has an observation point (ifindex, vlan, inner_vlan), that point packed in OBS.size bytes
(-1 / 0xFFFF for None). One object where a tuple of the point and the ident was three (a tuple, its GC
header, the ident's own bytes object): 56 bytes less per SA. agent/sastate.h reads the same layout."""

from __future__ import annotations

import struct

Obs = tuple[int | None, int | None, int | None] | None
OBS = struct.Struct("!qHH")
IDENT_LENGTHS = frozenset((12, 16, 36, 40))
_NONE_IF, _NONE_VLAN = -1, 0xFFFF


def sa_key(obs: Obs, ident: bytes) -> bytes:
    if obs is None:
        return ident
    ifindex, vlan, inner = obs
    if (ifindex is not None and ifindex < 0) or _NONE_VLAN in (vlan, inner):
        raise ValueError("an observation point is (ifindex, vlan, inner_vlan): ints or None")
    return ident + OBS.pack(_NONE_IF if ifindex is None else ifindex, _NONE_VLAN if vlan is None else vlan,
                            _NONE_VLAN if inner is None else inner)


def key_ident(key: bytes) -> bytes:
    return key if len(key) in IDENT_LENGTHS else key[:-OBS.size]


def key_obs(key: bytes) -> Obs:
    if len(key) in IDENT_LENGTHS:
        return None
    ifindex, vlan, inner = OBS.unpack_from(key, len(key) - OBS.size)
    return (None if ifindex == _NONE_IF else ifindex, None if vlan == _NONE_VLAN else vlan,
            None if inner == _NONE_VLAN else inner)
