"""What one API key may ask of the service: job sizes (policy), request rate (rate), jobs in flight (active)."""
