"""Suite files: schema, loading with located errors, and the Case records they become."""
