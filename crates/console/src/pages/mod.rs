//! The console's pages. Every handler reads its inputs, checks the session
//! (workspace, CSRF, read-only), calls the API's service and renders a
//! template; a change answers with a redirect (post/redirect/get) or, where
//! something is shown once (a new secret, a test report), with its page.

mod deliveries;
mod overview;
mod retention;
mod webhooks;

use askama::Template;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use courier_api::auth::{Admin, WorkspaceKey};
use courier_api::portal::{self, NewPortalLink};
use courier_model::WorkspaceId;
use courier_store::{SessionKind, Workspace};

pub(crate) use deliveries::{delivery, recover, redeliver, webhook_events};
pub(crate) use overview::{catalogue, overview};
pub(crate) use retention::{retention, set_retention};
pub(crate) use webhooks::{
    confirm_delete, create_webhook, delete_webhook, edit_webhook, new_webhook, rotate_secret,
    set_active, test_webhook, update_webhook, webhooks,
};

use crate::form::FormData;
use crate::session::{
    SESSION_COOKIE, SIGN_IN_COOKIE, Session, clear_cookie, cookie, portal_cookie, random_token,
    same_token, set_cookie,
};
use crate::{Console, PageError};

/// What the layout around every page needs: the title, where the person is,
/// what they may do, and the CSRF token for the forms in it.
pub(crate) struct Chrome {
    pub title: String,
    /// The workspace the page belongs to, for the navigation.
    pub ws: Option<String>,
    /// Which navigation entry is current.
    pub section: &'static str,
    pub signed_in: bool,
    pub admin: bool,
    pub portal: bool,
    pub read_only: bool,
    pub csrf: String,
}

impl Chrome {
    pub(crate) fn new(
        session: &Session,
        ws: Option<&WorkspaceId>,
        section: &'static str,
        title: impl Into<String>,
    ) -> Self {
        Self {
            title: title.into(),
            ws: ws.map(ToString::to_string),
            section,
            signed_in: true,
            admin: session.is_admin(),
            portal: session.is_portal(),
            read_only: session.record.read_only,
            csrf: session.csrf().to_owned(),
        }
    }

    fn signed_out(title: &str) -> Self {
        Self {
            title: title.to_owned(),
            ws: None,
            section: "",
            signed_in: false,
            admin: false,
            portal: false,
            read_only: false,
            csrf: String::new(),
        }
    }

    /// `/console/w/{ws}` followed by `rest`.
    pub(crate) fn at(&self, rest: &str) -> String {
        format!(
            "/console/w/{}{rest}",
            self.ws.as_deref().unwrap_or_default()
        )
    }
}

/// A rendered page with its status.
pub(crate) fn page(status: StatusCode, template: &impl Template) -> Result<Response, PageError> {
    Ok((status, Html(template.render()?)).into_response())
}

pub(crate) fn see_other(location: &str) -> Response {
    Redirect::to(location).into_response()
}

// --- signing in and out --------------------------------------------------------

pub(crate) async fn home(session: Result<Session, PageError>) -> Response {
    match session {
        Ok(s) => match &s.record.workspace_id {
            Some(ws) => see_other(&format!("/console/w/{ws}")),
            None => see_other("/console/workspaces"),
        },
        Err(_) => see_other("/console/sign-in"),
    }
}

#[derive(Template)]
#[template(path = "sign_in.html")]
struct SignInPage {
    chrome: Chrome,
    token: String,
    error: Option<&'static str>,
}

/// The sign-in form, with a token of its own that the browser must send
/// back both as a cookie and in the form (no session exists yet to hold it).
fn sign_in_form(console: &Console, error: Option<&'static str>) -> Result<Response, PageError> {
    let token = random_token();
    let status = if error.is_some() {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::OK
    };
    let mut response = page(
        status,
        &SignInPage {
            chrome: Chrome::signed_out("Sign in"),
            token: token.clone(),
            error,
        },
    )?;
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(console, SIGN_IN_COOKIE, &token, chrono::Duration::hours(1)),
    );
    Ok(response)
}

pub(crate) async fn sign_in_page(State(console): State<Console>) -> Result<Response, PageError> {
    sign_in_form(&console, None)
}

pub(crate) async fn sign_in(
    State(console): State<Console>,
    headers: HeaderMap,
    form: FormData,
) -> Result<Response, PageError> {
    match (cookie(&headers, SIGN_IN_COOKIE), form.get("csrf")) {
        (Some(a), Some(b)) if same_token(a, b) => {}
        _ => return Err(PageError::Csrf),
    }
    let Some(credential) = form.text("key") else {
        return sign_in_form(
            &console,
            Some("Paste an API key of your workspace (it starts with ck_)."),
        );
    };
    let api = console.api();
    let (kind, workspace) = if Admin::check(api, credential).is_ok() {
        (SessionKind::Admin, None)
    } else {
        match WorkspaceKey::from_token(api, credential).await {
            Ok(key) => (SessionKind::Key, Some(key.workspace)),
            Err(courier_api::ApiError::Unauthorized(_)) => {
                return sign_in_form(
                    &console,
                    Some(
                        "courier does not know this key. Check that you pasted all of it; \
                         keys are shown once, when they are created.",
                    ),
                );
            }
            Err(other) => return Err(other.into()),
        }
    };
    let to = match &workspace {
        Some(ws) => format!("/console/w/{ws}"),
        None => "/console/workspaces".to_owned(),
    };
    let (_, cookie) = Session::start(&console, kind, workspace, false).await?;
    let mut response = see_other(&to);
    let headers = response.headers_mut();
    headers.append(header::SET_COOKIE, cookie);
    headers.append(header::SET_COOKIE, clear_cookie(&console, SIGN_IN_COOKIE));
    Ok(response)
}

#[derive(Template)]
#[template(path = "signed_out.html")]
struct SignedOutPage {
    chrome: Chrome,
    portal: bool,
}

pub(crate) async fn sign_out(
    State(console): State<Console>,
    session: Session,
    headers: HeaderMap,
    form: FormData,
) -> Result<Response, PageError> {
    session.check_csrf(&form)?;
    Session::end(&console, &headers).await?;
    let mut response = page(
        StatusCode::OK,
        &SignedOutPage {
            chrome: Chrome::signed_out("Signed out"),
            portal: session.is_portal(),
        },
    )?;
    // Cleared with the attributes it was set with (a partitioned cookie is
    // only replaced by a partitioned one).
    let clear = if session.is_portal() {
        portal_cookie(&console, "", chrono::Duration::zero())
    } else {
        clear_cookie(&console, SESSION_COOKIE)
    };
    response.headers_mut().append(header::SET_COOKIE, clear);
    Ok(response)
}

/// Opens a portal link: once, before it expires, into a session for its
/// workspace only.
pub(crate) async fn redeem_portal_link(
    State(console): State<Console>,
    Path(token): Path<String>,
) -> Result<Response, PageError> {
    const REFUSED: &str = "This portal link is not valid: it was used already, has expired, or \
                           was never issued. Ask for a new link.";
    let Some(hash) = portal::token_hash(&token) else {
        return Err(PageError::Forbidden(REFUSED));
    };
    let link = console
        .api()
        .store()
        .redeem_portal_link(&hash, chrono::Utc::now())
        .await?
        .ok_or(PageError::Forbidden(REFUSED))?;
    let ws = link.workspace_id;
    let to = format!("/console/w/{ws}");
    let (_, cookie) =
        Session::start(&console, SessionKind::Portal, Some(ws), link.read_only).await?;
    let mut response = see_other(&to);
    response.headers_mut().append(header::SET_COOKIE, cookie);
    Ok(response)
}

// --- the operator's pages ------------------------------------------------------

#[derive(Template)]
#[template(path = "workspaces.html")]
struct WorkspacesPage {
    chrome: Chrome,
    workspaces: Vec<Workspace>,
}

/// The admin's workspace picker. Not there for anyone else.
pub(crate) async fn workspaces(
    State(console): State<Console>,
    session: Session,
) -> Result<Response, PageError> {
    if !session.is_admin() {
        return Err(PageError::NotFound);
    }
    let workspaces = console.api().store().list_workspaces().await?;
    page(
        StatusCode::OK,
        &WorkspacesPage {
            chrome: Chrome::new(&session, None, "workspaces", "Workspaces"),
            workspaces,
        },
    )
}

#[derive(Template)]
#[template(path = "portal_link.html")]
struct PortalLinkPage {
    chrome: Chrome,
    link: portal::PortalLinkView,
}

/// A portal link for this workspace, shown once. Portal sessions cannot
/// make links: a customer must not be able to hand out more access.
pub(crate) async fn create_portal_link(
    State(console): State<Console>,
    session: Session,
    Path(ws): Path<String>,
    form: FormData,
) -> Result<Response, PageError> {
    let ws = session.workspace(&console, &ws).await?;
    session.check_write(&form)?;
    if session.is_portal() {
        return Err(PageError::NotFound);
    }
    let ttl_minutes = match form.text("ttl_minutes") {
        None => None,
        Some(text) => Some(
            text.parse::<u32>()
                .ok()
                .filter(|m| (1..=24 * 60).contains(m))
                .ok_or(PageError::BadRequest(
                    "the link's lifetime must be a whole number of minutes from 1 to 1440",
                ))?,
        ),
    };
    let input = NewPortalLink {
        read_only: form.checked("read_only"),
        ttl_seconds: ttl_minutes.map(|m| m * 60),
    };
    let link = portal::create_link(console.api(), &ws, &input).await?;
    page(
        StatusCode::OK,
        &PortalLinkPage {
            chrome: Chrome::new(&session, Some(&ws), "overview", "Portal link"),
            link,
        },
    )
}
