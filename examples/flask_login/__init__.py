"""An example web application: logins and calls for users with mtls-auth (Flask)."""
