"""Animation methods."""

from anima.quiet import install as _quiet_third_party_logs

_quiet_third_party_logs()
