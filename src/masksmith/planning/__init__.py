"""Planning: the data's fingerprint and the compute budget → the options the user did not give, each with its
reason (plan.py: rules; budget.py: network, input size and batch timed against --max-time; stage.py: the
training stage that checks, fingerprints and plans)."""
