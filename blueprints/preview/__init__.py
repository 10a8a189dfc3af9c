"""Preview reports: pulumi preview documents -> one markdown comment per merge request."""
