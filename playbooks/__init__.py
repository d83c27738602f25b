"""fleet's playbooks (probe, provision, examples), shipped as data; see README.md here."""
