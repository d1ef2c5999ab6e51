"""Who may connect and write: access policy, users file, digest nonces, lock policy."""
