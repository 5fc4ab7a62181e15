package admin

// OpenAPI is the embedded OpenAPI document, for the test that checks it.
var OpenAPI = openAPI

// Routes lists the API's routes as "METHOD /path", for the test that checks them
// against the OpenAPI document.
func (a *API) Routes() []string { return append([]string(nil), a.routes...) }

// AuditEnums are the values the audit filters take, for the test that compares them
// with the document's enums.
var AuditEnums = auditEnums

// IDPatterns are the id shapes the API takes, for the test that compares them with the
// document's patterns.
var IDPatterns = map[string]string{"subscription": subscriptionID.String(), "purchase": purchaseID.String(), "customer": customerID.String(),
	"event": eventID.String()}
