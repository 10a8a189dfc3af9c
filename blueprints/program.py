"""Entry point that Pulumi runs (Pulumi.yaml `main`), and that the offline plan runs too."""

from blueprints.stack import deploy

deploy()
