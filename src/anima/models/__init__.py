"""Network components shared by several methods (diffusers ``ModelMixin`` models and the ways
we compose them with stock diffusers models)."""
