"""The program `pulumi up` runs (Pulumi.yaml `main`): the stack's settings and app.yaml -> the
chosen blueprint. All of it lives in the blueprints package; `blueprints plan` runs this file
offline under Pulumi's mock runtime."""

from blueprints.stack import deploy

deploy()
