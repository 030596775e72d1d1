"""Reference solutions. model/ is generated from these (`course sync-stubs`)."""
