"""Network components shared by several methods (diffusers ``ModelMixin`` models and the ways
we compose them with stock diffusers models)."""

from anima.quiet import install as _quiet_third_party_logs

_quiet_third_party_logs()
