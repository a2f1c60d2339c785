"""The OpenAI wire format and image intake: requests in, responses and stream frames out. No Flask, no torch."""
