package admin

// OpenAPI is the embedded OpenAPI document, for the test that checks it.
var OpenAPI = openAPI

// Routes lists the API's routes as "METHOD /path", for the test that checks them
// against the OpenAPI document.
func (a *API) Routes() []string { return append([]string(nil), a.routes...) }
