"""The commit path: a member's Raft node on the event loop, and its read-index rounds."""
