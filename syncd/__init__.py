"""syncd: mirror a Stripe account into PostgreSQL without webhooks."""

__version__ = "0.1.0"
