// The /docs page: Swagger UI (static/vendor/swagger-ui/) rendering this server's /openapi.json.
// A classic script, not a module: swagger-ui-bundle.js defines the global SwaggerUIBundle.
/* global SwaggerUIBundle */
"use strict";

window.addEventListener("DOMContentLoaded", () => {
  const root = document.getElementById("docs");
  SwaggerUIBundle({
    url: root.dataset.specUrl,
    domNode: root,
    deepLinking: true,
    validatorUrl: null, // no badge fetched from validator.swagger.io: the page works offline
    tryItOutEnabled: false,
    persistAuthorization: false,
  });
});
