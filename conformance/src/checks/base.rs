//! `/v2/`: support, and what a client without credentials is told.

use reqwest::Method;

use super::Ctx;
use crate::client::{Challenge, Client, Request, parse_challenge};
use crate::expect::{self, Outcome, ensure};

/// `GET /v2/` (with the target's credentials): 200. The Docker header
/// `Docker-Distribution-API-Version` is optional; when sent, it must say
/// `registry/2.0`.
pub async fn api_version(cx: &Ctx) -> Outcome {
    let r = cx.get(cx.client.url("/v2/")?).await?;
    expect::status(&r, 200)?;
    match r.header("Docker-Distribution-API-Version") {
        Some(v) => ensure!(
            v.trim() == "registry/2.0",
            "{}: Docker-Distribution-API-Version is {v:?}, expected \"registry/2.0\" (or none)",
            r.request
        ),
        None => cx.note("no Docker-Distribution-API-Version header (optional)"),
    }
    Ok(())
}

/// `GET /v2/` without credentials: 200 (an open registry), or 401 with a
/// `WWW-Authenticate` challenge (`Bearer realm=…` or `Basic`) and, if the
/// body is JSON, `UNAUTHORIZED`.
pub async fn auth_challenge(cx: &Ctx) -> Outcome {
    let anonymous = Client::new(&crate::Target {
        username: None,
        password: None,
        ..cx.target.clone()
    })?;
    // Sent bare: this client has learned nothing, so it sends no credentials.
    let r = anonymous
        .send_raw(Request::new(Method::GET, cx.client.url("/v2/")?))
        .await?;
    match r.status() {
        200 => {
            cx.note("open: /v2/ needs no credentials");
            Ok(())
        }
        401 => {
            let values = r.header_all("WWW-Authenticate");
            ensure!(
                !values.is_empty(),
                "{}: 401 without a WWW-Authenticate header",
                r.request
            );
            let challenge = values.iter().find_map(|v| parse_challenge(v));
            ensure!(
                challenge.is_some(),
                "{}: WWW-Authenticate {values:?} is neither `Bearer realm=…` nor `Basic`",
                r.request
            );
            if matches!(challenge, Some(Challenge::Bearer { .. })) {
                cx.note("Bearer token auth");
            } else {
                cx.note("Basic auth");
            }
            if !r.body.is_empty() {
                expect::error(&r, 401, &["UNAUTHORIZED"])?;
            }
            Ok(())
        }
        _ => Err(format!(
            "{}: expected 200 or 401, got {}",
            r.request,
            r.summary()
        )),
    }
}
