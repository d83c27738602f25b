"""Records of fleet: job spec, database tables and the state/reason enums."""
