//! Everything the client does to the world, in one place: REST calls, frames on the
//! WebSocket, the address bar and `localStorage`. Components call these; each reports what
//! happened back into the state as an [`Action`].

use relay_protocol::{ClientFrame, Prompt, Session, UpdateSessionRequest};
use uuid::Uuid;
use yew::Callback;

use crate::ctx::{Ctx, push_path, replace_path, session_in_path};
use crate::socket::Socket;
use crate::state::{Action, InFlight, Retry};
use crate::{api, storage};

impl Ctx {
    /// Opens a session in this tab, as a new entry of the browser's history.
    pub fn open(&self, session: Session) {
        push_path(&format!("/c/{}", session.id));
        self.show(session);
    }

    /// Shows a session (the address already names it: Back, Forward, a link).
    pub fn show(&self, session: Session) {
        let id = session.id;
        self.dispatch(Action::Open(session));
        if let Some(socket) = &self.socket {
            socket.watch(Some(id));
        }
    }

    /// Closes the open session (a new chat), as a new entry of the browser's history.
    pub fn close(&self) {
        push_path("/");
        self.hide();
    }

    /// Shows no session (the address names none).
    pub fn hide(&self) {
        self.dispatch(Action::Close);
        if let Some(socket) = &self.socket {
            socket.watch(None);
        }
    }

    /// Shows the session the address names though the list does not have it (a link to an
    /// older session): asked of the server; one that is not the user's, or no longer
    /// exists, is said so and the address goes back to the start.
    pub fn show_from_server(&self, id: Uuid) {
        let (ctx, Some(token)) = (self.clone(), self.token.clone()) else { return };
        wasm_bindgen_futures::spawn_local(async move {
            match api::session(&token, id).await {
                Ok(found) if session_in_path() == Some(id) => ctx.show(found.session),
                Ok(_) => {}
                Err(e) if e.status == 404 => {
                    replace_path("/");
                    ctx.toast("That chat was not found: it does not exist, or it is not yours.");
                }
                Err(e) => ctx.toast(e.message),
            }
        });
    }

    /// Opens a session at one of its messages (a search result), as a new entry of the
    /// browser's history; the session is asked of the server, as the list may not have it.
    pub fn open_found(&self, session_id: Uuid, message_id: Uuid) {
        let (ctx, Some(token)) = (self.clone(), self.token.clone()) else { return };
        wasm_bindgen_futures::spawn_local(async move {
            match api::session(&token, session_id).await {
                Ok(found) => {
                    push_path(&format!("/c/{session_id}"));
                    ctx.dispatch(Action::OpenAt { session: found.session, message_id });
                    if let Some(socket) = &ctx.socket {
                        socket.watch(Some(session_id));
                    }
                }
                Err(e) if e.status == 404 => ctx.toast("That chat was not found: it was deleted."),
                Err(e) => ctx.toast(e.message),
            }
        });
    }

    /// Downloads a session as a file (`md`, `txt` or `json`): fetched with the token (a link
    /// could not carry it), then saved by the browser from memory.
    pub fn download(&self, session_id: Uuid, format: &'static str) {
        let (ctx, Some(token)) = (self.clone(), self.token.clone()) else { return };
        wasm_bindgen_futures::spawn_local(async move {
            match api::export(&token, session_id, format).await {
                Ok((name, body)) => {
                    if save_file(&name, &body).is_err() {
                        ctx.toast("The browser would not save the file.");
                    }
                }
                Err(e) => ctx.toast(e.message),
            }
        });
    }

    /// Loads the models a session may use.
    pub fn load_models(&self) {
        let (ctx, Some(token)) = (self.clone(), self.token.clone()) else { return };
        wasm_bindgen_futures::spawn_local(async move {
            match api::models(&token).await {
                Ok(models) => ctx.dispatch(Action::Models(models)),
                Err(e) => ctx.toast(e.message),
            }
        });
    }

    /// Changes a session's model or system prompt (every tab hears `session_updated`).
    pub fn update_session(&self, session_id: Uuid, change: UpdateSessionRequest, done: Callback<bool>) {
        let (ctx, Some(token)) = (self.clone(), self.token.clone()) else { return };
        wasm_bindgen_futures::spawn_local(async move {
            let saved = match api::update_session(&token, session_id, &change).await {
                Ok(_) => true,
                Err(e) => {
                    ctx.toast(e.message);
                    false
                }
            };
            done.emit(saved);
        });
    }

    /// Rates a reply; `done` gets the rating once it is stored.
    pub fn rate(&self, session_id: Uuid, message_id: Uuid, rating: i8, done: Callback<i8>) {
        let (ctx, Some(token)) = (self.clone(), self.token.clone()) else { return };
        wasm_bindgen_futures::spawn_local(async move {
            match api::rate(&token, session_id, message_id, rating).await {
                Ok(stored) => done.emit(stored.rating),
                Err(e) => ctx.toast(e.message),
            }
        });
    }

    /// Loads the user's saved prompts into `into`.
    pub fn load_prompts(&self, into: Callback<Vec<Prompt>>) {
        let (ctx, Some(token)) = (self.clone(), self.token.clone()) else { return };
        wasm_bindgen_futures::spawn_local(async move {
            match api::prompts(&token).await {
                Ok(prompts) => into.emit(prompts),
                Err(e) => ctx.toast(e.message),
            }
        });
    }

    /// Saves a prompt, then reloads the list into `into`.
    pub fn save_prompt(&self, title: String, content: String, into: Callback<Vec<Prompt>>) {
        let (ctx, Some(token)) = (self.clone(), self.token.clone()) else { return };
        wasm_bindgen_futures::spawn_local(async move {
            match api::create_prompt(&token, &title, &content).await {
                Ok(_) => ctx.load_prompts(into),
                Err(e) => ctx.toast(e.message),
            }
        });
    }

    /// Deletes a saved prompt, then reloads the list into `into`.
    pub fn delete_prompt(&self, id: Uuid, into: Callback<Vec<Prompt>>) {
        let (ctx, Some(token)) = (self.clone(), self.token.clone()) else { return };
        wasm_bindgen_futures::spawn_local(async move {
            match api::delete_prompt(&token, id).await {
                Ok(()) => ctx.load_prompts(into),
                Err(e) => ctx.toast(e.message),
            }
        });
    }

    /// Asks whether a session has a working share link (and how many watch it).
    pub fn load_share(&self, session_id: Uuid) {
        let (ctx, Some(token)) = (self.clone(), self.token.clone()) else { return };
        wasm_bindgen_futures::spawn_local(async move {
            match api::share_status(&token, session_id).await {
                Ok(share) => ctx.dispatch(Action::Share { session_id, share }),
                Err(e) => ctx.toast(e.message),
            }
        });
    }

    /// Makes a new share link for a session (the old one stops working), keeping its
    /// address in this browser.
    pub fn create_share(&self, session_id: Uuid, expires_in_secs: Option<u64>, done: Callback<()>) {
        let (ctx, Some(token)) = (self.clone(), self.token.clone()) else { return };
        wasm_bindgen_futures::spawn_local(async move {
            match api::create_share(&token, session_id, expires_in_secs).await {
                Ok(created) => {
                    storage::save_share_url(created.share.id, &created.url);
                    ctx.dispatch(Action::Share { session_id, share: Some(created.share) });
                }
                Err(e) => ctx.toast(e.message),
            }
            done.emit(());
        });
    }

    /// Stops sharing a session: its link opens nothing from now on.
    pub fn revoke_share(&self, session_id: Uuid, done: Callback<()>) {
        let (ctx, Some(token)) = (self.clone(), self.token.clone()) else { return };
        wasm_bindgen_futures::spawn_local(async move {
            match api::revoke_share(&token, session_id).await {
                Ok(()) => ctx.dispatch(Action::Share { session_id, share: None }),
                Err(e) => ctx.toast(e.message),
            }
            done.emit(());
        });
    }

    /// Loads a page of the session list.
    pub fn load_sessions(&self, page: u32) {
        let (ctx, Some(token)) = (self.clone(), self.token.clone()) else { return };
        wasm_bindgen_futures::spawn_local(async move {
            match api::sessions(&token, page).await {
                Ok(list) => ctx.dispatch(Action::SessionsPage { page, sessions: list.sessions, total: list.total }),
                Err(e) => ctx.dispatch(Action::Toast(e.message, Some(Retry::LoadSessions))),
            }
        });
    }

    /// Loads the messages before `oldest`.
    pub fn load_older(&self, session_id: Uuid, oldest: Uuid) {
        let (ctx, Some(token)) = (self.clone(), self.token.clone()) else { return };
        wasm_bindgen_futures::spawn_local(async move {
            match api::older_messages(&token, session_id, oldest).await {
                Ok(page) => {
                    ctx.dispatch(Action::Older { session_id, messages: page.messages, has_more: page.has_more })
                }
                Err(e) => ctx.toast(e.message),
            }
        });
    }

    /// Logs in: keeps the token.
    pub fn logged_in(&self, auth: relay_protocol::AuthResponse) {
        storage::save_auth(&auth.user, &auth.token);
        self.dispatch(Action::LoggedIn { user: auth.user, token: auth.token });
    }

    /// Logs out: forgets the token and the drafts, and closes the connection.
    pub fn logout(&self, notice: Option<String>) {
        storage::clear_auth();
        storage::clear_drafts();
        if let Some(socket) = &self.socket {
            socket.stop();
        }
        push_path("/");
        self.dispatch(Action::LoggedOut(notice));
    }

    /// Sends a message to a session; `key` is the idempotency key of an earlier attempt of
    /// the same send (a retry), else a new one. Returns whether it went out; when it did
    /// not, a toast offers to send it again.
    pub fn send(&self, session_id: Uuid, content: String, key: Option<String>) -> bool {
        let Some(socket) = &self.socket else { return false };
        let request_id = socket.request_id();
        // Every send carries its own idempotency key, kept for a retry of it.
        let key = key.unwrap_or_else(Socket::new_key);
        let in_flight =
            InFlight { request_id: request_id.clone(), session_id, content: content.clone(), key: key.clone() };
        self.dispatch(Action::Sending(in_flight));
        let frame = ClientFrame::Send {
            id: Some(request_id),
            session_id,
            content: content.clone(),
            client_message_id: Some(key.clone()),
        };
        let sent = socket.send(&frame);
        if !sent {
            self.dispatch(Action::Toast(
                "Not connected; your message was not sent.".into(),
                Some(Retry::Send { session_id, content, key }),
            ));
        }
        sent
    }

    /// The first message of a new chat: the session is made (over REST), opened, and the
    /// message sent to it; `started` runs once the session exists (the composer empties).
    /// If the session cannot be made, the text stays where it was.
    pub fn start_chat(&self, content: String, started: Callback<()>) {
        let (ctx, Some(token)) = (self.clone(), self.token.clone()) else { return };
        wasm_bindgen_futures::spawn_local(async move {
            let session = match api::create_session(&token).await {
                Ok(session) => session,
                Err(e) => {
                    ctx.toast(format!("The chat could not be started: {}", e.message));
                    return;
                }
            };
            let session_id = session.id;
            ctx.dispatch(Action::Frame(relay_protocol::ServerFrame::SessionCreated {
                id: None,
                session: session.clone(),
            }));
            ctx.open(session);
            storage::save_draft(Uuid::nil(), "");
            started.emit(());
            ctx.send(session_id, content, None);
        });
    }

    /// Replaces a user message with new text; the server answers it again.
    pub fn edit(&self, session_id: Uuid, message_id: Uuid, content: String) -> bool {
        let Some(socket) = &self.socket else { return false };
        let frame = ClientFrame::Edit {
            id: Some(socket.request_id()),
            session_id,
            message_id,
            content,
            client_message_id: Some(Socket::new_key()),
        };
        let sent = socket.send(&frame);
        if !sent {
            self.toast("Not connected; the edit was not sent.");
        }
        sent
    }

    /// Asks for another answer to the last message.
    pub fn regenerate(&self, session_id: Uuid) {
        if let Some(socket) = &self.socket {
            let key = Some(Socket::new_key());
            socket.send(&ClientFrame::Regenerate { id: Some(socket.request_id()), session_id, client_message_id: key });
        }
    }

    /// Stops the reply streaming in.
    pub fn stop(&self, session_id: Uuid) {
        if let Some(socket) = &self.socket {
            socket.send(&ClientFrame::Stop { id: None, session_id });
        }
    }

    /// Renames a session (every tab hears of it from the server).
    pub fn rename(&self, id: Uuid, title: String) {
        let (ctx, Some(token)) = (self.clone(), self.token.clone()) else { return };
        wasm_bindgen_futures::spawn_local(async move {
            if let Err(e) = api::rename_session(&token, id, title.trim()).await {
                ctx.toast(e.message);
            }
        });
    }

    /// Deletes a session (every tab hears of it from the server).
    pub fn delete(&self, id: Uuid) {
        let (ctx, Some(token)) = (self.clone(), self.token.clone()) else { return };
        wasm_bindgen_futures::spawn_local(async move {
            if let Err(e) = api::delete_session(&token, id).await {
                ctx.toast(e.message);
            }
        });
    }

    /// Does again what a toast's Retry offers.
    pub fn retry(&self, retry: Retry) {
        match retry {
            Retry::Send { session_id, content, key } => {
                self.send(session_id, content, Some(key));
            }
            Retry::LoadSessions => self.load_sessions(1),
        }
    }
}

/// Copies `text`; `button` then says how it went (the browser may refuse the clipboard) for
/// a moment, and offers to copy again.
pub fn copy_with_feedback(text: &str, button: web_sys::Element) {
    /// How long a copy button says how the copy went.
    const SHOWN_MS: u32 = 2000;
    let Some(window) = web_sys::window() else { return };
    let written = wasm_bindgen_futures::JsFuture::from(window.navigator().clipboard().write_text(text));
    wasm_bindgen_futures::spawn_local(async move {
        let copied = written.await.is_ok();
        button.set_text_content(Some(if copied { "Copied" } else { "Copy failed" }));
        gloo_timers::future::TimeoutFuture::new(SHOWN_MS).await;
        button.set_text_content(Some("Copy"));
    });
}

/// Gives the keyboard focus to the element with this id, once the page has drawn it.
pub fn focus_soon(id: &'static str) {
    gloo_timers::callback::Timeout::new(0, move || {
        let element = web_sys::window().and_then(|w| w.document()).and_then(|d| d.get_element_by_id(id));
        if let Some(element) = element.and_then(|e| wasm_bindgen::JsCast::dyn_into::<web_sys::HtmlElement>(e).ok()) {
            let _ = element.focus();
        }
    })
    .forget();
}

/// Offers `text` to the user as a file named `name` (a link to it in memory, clicked).
fn save_file(name: &str, text: &str) -> Result<(), wasm_bindgen::JsValue> {
    use wasm_bindgen::JsCast;
    let parts = js_sys::Array::of1(&text.into());
    let blob = web_sys::Blob::new_with_str_sequence(&parts)?;
    let url = web_sys::Url::create_object_url_with_blob(&blob)?;
    let document = web_sys::window().and_then(|w| w.document()).ok_or("no document")?;
    let link: web_sys::HtmlAnchorElement = document.create_element("a")?.dyn_into()?;
    link.set_href(&url);
    link.set_download(name);
    link.click();
    // The download has started from the link by the time this runs; the memory goes back.
    gloo_timers::callback::Timeout::new(60_000, move || {
        let _ = web_sys::Url::revoke_object_url(&url);
    })
    .forget();
    Ok(())
}
