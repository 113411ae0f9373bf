//! CORS: only the origins in `CORS_ORIGINS` may call the API from a browser.

use reqwest::{Method, header};
use sqlx::PgPool;

use crate::test_app::TestApp;

async fn preflight(app: &TestApp, origin: &str) -> reqwest::Response {
    app.client
        .request(Method::OPTIONS, app.url("/api/tickets"))
        .header(header::ORIGIN, origin)
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
        .header(
            header::ACCESS_CONTROL_REQUEST_HEADERS,
            "authorization,content-type,idempotency-key",
        )
        .send()
        .await
        .unwrap()
}

fn header_of(response: &reqwest::Response, name: header::HeaderName) -> Option<String> {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_ascii_lowercase())
}

#[sqlx::test(migrations = false)]
async fn a_preflight_from_a_configured_origin_is_allowed_and_one_from_another_origin_is_not(
    pool: PgPool,
) {
    let app = TestApp::spawn_with(
        pool,
        &[("CORS_ORIGINS", "https://app.example, https://admin.example")],
    )
    .await;
    for origin in ["https://app.example", "https://admin.example"] {
        let response = preflight(&app, origin).await;
        assert!(response.status().is_success(), "{}", response.status());
        assert_eq!(
            header_of(&response, header::ACCESS_CONTROL_ALLOW_ORIGIN).as_deref(),
            Some(origin)
        );
        let methods = header_of(&response, header::ACCESS_CONTROL_ALLOW_METHODS).unwrap();
        assert!(
            methods.contains("post") && methods.contains("delete"),
            "{methods}"
        );
        let headers = header_of(&response, header::ACCESS_CONTROL_ALLOW_HEADERS).unwrap();
        for name in ["authorization", "content-type", "idempotency-key"] {
            assert!(headers.contains(name), "{headers}");
        }
        assert_eq!(
            header_of(&response, header::ACCESS_CONTROL_MAX_AGE).as_deref(),
            Some("600")
        );
    }
    for origin in [
        "https://evil.example",
        "http://app.example",
        "https://app.example.evil.example",
    ] {
        let response = preflight(&app, origin).await;
        assert_eq!(
            header_of(&response, header::ACCESS_CONTROL_ALLOW_ORIGIN),
            None,
            "{origin}"
        );
    }

    // A simple request: the allowed origin is echoed, another is not.
    let response = app
        .client
        .get(app.url("/health"))
        .header(header::ORIGIN, "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        header_of(&response, header::ACCESS_CONTROL_ALLOW_ORIGIN).as_deref(),
        Some("https://app.example")
    );
    let response = app
        .client
        .get(app.url("/health"))
        .header(header::ORIGIN, "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        header_of(&response, header::ACCESS_CONTROL_ALLOW_ORIGIN),
        None
    );
}

#[sqlx::test(migrations = false)]
async fn without_cors_origins_no_origin_is_allowed(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let response = preflight(&app, "https://app.example").await;
    assert_eq!(
        header_of(&response, header::ACCESS_CONTROL_ALLOW_ORIGIN),
        None
    );
}
