"""The OpenAPI 3.1 document of the API, built in Python from the code's own limits, fields and errors."""
