// Swagger UI for /api/docs, from the vendored bundle; settings come from django-ninja.
const config = JSON.parse(document.getElementById("swagger-settings").textContent);
const csrfToken = document.body.dataset.csrfToken;
config.dom_id = "#swagger-ui";
config.presets = [SwaggerUIBundle.presets.apis];
if (csrfToken) {
  // Session-authenticated "Try it out" requests need Django's CSRF header.
  config.requestInterceptor = (req) => { req.headers["X-CSRFToken"] = csrfToken; return req; };
}
SwaggerUIBundle(config);
