"""Import-only stand-in for torchaudio (see tools/comfy_stubs/import_only/import_only_stub.py)."""
from import_only_stub import make_stub

make_stub(globals())
