"""The exercise modules, one per lesson. solutions/ holds the reference
answers; model/ is generated from it with the answers stripped (`course sync-stubs`)."""
