"""``gradtel/v1/ingest.proto``: its messages, built by ``gradtel.v1._messages``."""

from gradtel.v1._messages import export as _export

_export("gradtel/v1/ingest.proto", globals())
