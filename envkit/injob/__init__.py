"""Code that runs inside the job's image: standard library only at import; torch is handed in as an argument."""
