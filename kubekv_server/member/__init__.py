"""The member: identity, lifecycle, proposals, reads, membership and maintenance."""
