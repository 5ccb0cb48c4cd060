"""``gradtel/v1/common.proto``: its messages and enums, built by ``gradtel.v1._messages``."""

from gradtel.v1._messages import export as _export

_export("gradtel/v1/common.proto", globals())
