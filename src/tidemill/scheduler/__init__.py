"""Pure scheduling policy: a snapshot in, decisions out."""
