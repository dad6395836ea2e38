"""Speculative decoding: proposers that guess a request's next tokens cheaply
(`ngram.py`) and the rule that verifies the guesses against the target
model's own draws in one forward (`verify.py`). The scheduler asks for the
drafts and budgets them as ordinary tokens; the runner feeds them as extra
rows and samples every one of them."""
