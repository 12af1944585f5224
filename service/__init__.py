"""The mail service: an HTTP API that sends mail through SMTP."""
