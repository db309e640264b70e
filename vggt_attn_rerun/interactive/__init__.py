"""New queries after a run from the q/k cache: sessions, clicks, notebook, prompt."""
