"""PIM-SM (RFC 7761) as an mgmbus routing protocol: `packet` (the wire), `neighbors` (the rules of one link),
`plugin` (the process shell)."""
