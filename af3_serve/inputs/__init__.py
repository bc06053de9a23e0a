"""A request's audio and text turned into engine inputs: fetch, decode, prompt, render."""
