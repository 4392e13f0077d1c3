//! `/api/v1/projects/{project}/members` and `/api/v1/people`: people and
//! their roles in projects, named by the admin before (or after) they
//! first sign in. A person's effective role in a project is the strongest
//! of the admin's grant and the directory's; the directory's rows are
//! shown beside the admin's and replaced by the directory at each look.
//! Admin only (project maintainers will manage their own members once
//! people sign in).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;
use slipway_storage::meta::{Membership, Person, Role, SOURCE_ADMIN};

use super::robots::project_exists;
use super::{Admin, Error, ErrorBody, Result, audit, time};
use crate::identity::valid_username;
use crate::server::AppState;

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MemberView {
    pub person: String,
    pub project: String,
    /// `maintainer`, `developer` or `guest`.
    pub role: String,
    /// `admin` (granted here) or `directory` (from a group).
    pub source: String,
    pub granted_at: String,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PersonView {
    pub name: String,
    /// `admin` or `directory`: who named them first.
    pub created_by: String,
    pub created_at: String,
    /// In the directory's admin group when it was last asked.
    pub admin: bool,
    pub disabled: bool,
    pub last_sign_in: Option<String>,
    /// The OpenID Connect account (`sub`) they are bound to, if any.
    pub oidc_subject: Option<String>,
    pub memberships: Vec<MemberView>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberBody {
    /// `maintainer`, `developer` or `guest`.
    pub role: String,
}

pub(crate) fn member_view(m: &Membership) -> MemberView {
    MemberView {
        person: m.person.clone(),
        project: m.project.clone(),
        role: m.role.as_str().to_owned(),
        source: m.source.clone(),
        granted_at: time(m.granted_at),
    }
}

fn person_view(p: &Person, memberships: &[Membership]) -> PersonView {
    PersonView {
        name: p.name.clone(),
        created_by: p.created_by.clone(),
        created_at: time(p.created_at),
        admin: p.is_admin,
        disabled: p.disabled,
        last_sign_in: p.last_sign_in.map(time),
        oidc_subject: p.oidc_subject.clone(),
        memberships: memberships.iter().map(member_view).collect(),
    }
}

pub(crate) fn check_person(name: &str) -> Result<()> {
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(Error::bad_request(format!(
            "{name:.80}: write usernames in lowercase, as people sign in"
        )));
    }
    if crate::auth::people::RESERVED.contains(&name) {
        return Err(Error::bad_request(format!(
            "{name} is a built-in account's name, not a person's"
        )));
    }
    if !valid_username(name) {
        return Err(Error::bad_request(format!(
            "{name:.80} is not a username: use 1 to 64 letters, digits, '.', '_' or '-', \
             starting with a letter or digit"
        )));
    }
    Ok(())
}

#[utoipa::path(get, path = "/api/v1/projects/{project}/members", tag = "people",
    params(("project" = String, Path)),
    responses((status = 200, body = [MemberView]), (status = 404, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    _admin: Admin,
    Path(project): Path<String>,
) -> Result<Json<Vec<MemberView>>> {
    project_exists(&state, &project).await?;
    let members = state.meta.members_of(&project).await?;
    Ok(Json(members.iter().map(member_view).collect()))
}

#[utoipa::path(put, path = "/api/v1/projects/{project}/members/{person}", tag = "people",
    params(("project" = String, Path), ("person" = String, Path)), request_body = MemberBody,
    responses((status = 200, body = MemberView), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn grant(
    State(state): State<AppState>,
    Admin(caller): Admin,
    Path((project, person)): Path<(String, String)>,
    Json(body): Json<MemberBody>,
) -> Result<Json<MemberView>> {
    check_person(&person)?;
    let role = Role::parse(&body.role).ok_or_else(|| {
        Error::bad_request(format!(
            "{:.40} is not a role: use maintainer, developer or guest",
            body.role
        ))
    })?;
    if !state
        .meta
        .membership_grant(&person, &project, role, SOURCE_ADMIN)
        .await?
    {
        return Err(Error::not_found(format!(
            "project {project:.100} does not exist"
        )));
    }
    audit(
        &state,
        &caller,
        "member.grant",
        Some(&project),
        &person,
        json!({"role": role.as_str()}),
    )
    .await?;
    let m = state
        .meta
        .members_of(&project)
        .await?
        .into_iter()
        .find(|m| m.person == person && m.source == SOURCE_ADMIN)
        .ok_or_else(|| Error::new(StatusCode::CONFLICT, "the grant was removed meanwhile"))?;
    Ok(Json(member_view(&m)))
}

#[utoipa::path(delete, path = "/api/v1/projects/{project}/members/{person}", tag = "people",
    params(("project" = String, Path), ("person" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn revoke(
    State(state): State<AppState>,
    Admin(caller): Admin,
    Path((project, person)): Path<(String, String)>,
) -> Result<StatusCode> {
    check_person(&person)?;
    project_exists(&state, &project).await?;
    if !state
        .meta
        .membership_revoke(&person, &project, SOURCE_ADMIN)
        .await?
    {
        return Err(Error::not_found(format!(
            "{person} has no role granted by the admin in {project:.100} \
             (a role from the directory goes when the directory says so)"
        )));
    }
    audit(
        &state,
        &caller,
        "member.revoke",
        Some(&project),
        &person,
        json!({}),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/people", tag = "people",
    responses((status = 200, body = [PersonView])))]
pub async fn people(State(state): State<AppState>, _admin: Admin) -> Result<Json<Vec<PersonView>>> {
    let mut all: std::collections::HashMap<String, Vec<Membership>> = Default::default();
    for m in state.meta.memberships().await? {
        all.entry(m.person.clone()).or_default().push(m);
    }
    let people = state.meta.people().await?;
    Ok(Json(
        people
            .iter()
            .map(|p| person_view(p, all.get(&p.name).map_or(&[][..], Vec::as_slice)))
            .collect(),
    ))
}

#[utoipa::path(get, path = "/api/v1/people/{person}", tag = "people",
    params(("person" = String, Path)),
    responses((status = 200, body = PersonView), (status = 404, body = ErrorBody)))]
pub async fn person(
    State(state): State<AppState>,
    _admin: Admin,
    Path(person): Path<String>,
) -> Result<Json<PersonView>> {
    check_person(&person)?;
    let p = state
        .meta
        .person_get(&person)
        .await?
        .ok_or_else(|| Error::not_found(format!("{person} is not known")))?;
    let m = state.meta.memberships_of(&person).await?;
    Ok(Json(person_view(&p, &m)))
}

/// Unbinds a person from their OpenID Connect account (the provider gave
/// them a new one): their next sign-in through the provider binds again.
#[utoipa::path(delete, path = "/api/v1/people/{person}/oidc-subject", tag = "people",
    params(("person" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn unbind_subject(
    State(state): State<AppState>,
    Admin(caller): Admin,
    Path(person): Path<String>,
) -> Result<StatusCode> {
    check_person(&person)?;
    let before = state
        .meta
        .person_get(&person)
        .await?
        .ok_or_else(|| Error::not_found(format!("{person} is not known")))?;
    state.meta.person_unbind_subject(&person).await?;
    audit(
        &state,
        &caller,
        "person.oidc_unbind",
        None,
        &person,
        json!({"subject": before.oidc_subject}),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
