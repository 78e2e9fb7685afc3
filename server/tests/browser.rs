//! The browser client, driven in headless Chromium (through chromedriver) against the real
//! server: login, chats, streaming markdown, several tabs, stop, reload mid-reply,
//! regenerate, edit, delete, hostile markdown, a phone-sized window, an expired login.
//!
//! Needs `chromium` and `chromedriver` on the PATH (or `CHROME_BIN` / `CHROMEDRIVER`) and
//! the built client in `client-yew/dist` (`cargo xtask client`); `scripts/test.sh` sees to
//! both. Set `RELAY_SCREENSHOTS=docs/screenshots` to refresh the README's screenshots.

mod common;
#[path = "browser/harness.rs"]
mod harness;

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use harness::*;
use serde_json::{Value, json};
use thirtyfour::prelude::*;

#[tokio::test]
async fn chat_streams_markdown_to_every_tab_stops_and_survives_reload() {
    let _one = ONE_AT_A_TIME.lock().await;
    let harness = Harness::start("chat", &[]).await.expect("harness");
    harness
        .run(async |h| {
            let a = h.open("a").await?;
            h.tab(a).wait_text("#login-submit", "Log in").await?;

            // Register, log out, a wrong password is refused with a message, the right one works.
            h.tab(a).register("alice").await?;
            h.tab(a).click("#logout").await?;
            h.tab(a).login("alice", "not the password").await?;
            h.tab(a).wait_text("#login-error", "").await?;
            h.tab(a).login("alice", PASSWORD).await?;
            h.tab(a).wait_online().await?;

            // A new chat; a typed message, sent with Enter, gets a streamed reply.
            h.tab(a).click("#new-chat").await?;
            h.tab(a).send("hello there").await?;
            let session = h.tab(a).session_id().await?;
            h.tab(a).wait_settled(2).await?;
            let shown = h.tab(a).messages().await?;
            assert_eq!(shown[0], ("user".into(), "hello there".into()));
            assert!(!shown[1].1.is_empty());

            // Markdown streams in with the typing indicator, then settles rendered, with the
            // code block highlighted and copyable.
            let markdown = "Here is **bold** text.\n\n```rust\nfn main() { let x = 1; }\n```\n\nDone, see [the docs](https://example.com/docs). [[mock echo tps=25]]";
            h.tab(a).send(markdown).await?;
            h.tab(a).element("#streaming #typing").await?;
            h.tab(a).wait_settled(4).await?;
            let last = "#messages article.message.assistant:last-of-type";
            h.tab(a).wait_text(&format!("{last} strong"), "bold").await?;
            h.tab(a).element(&format!("{last} .code .copy")).await?;
            h.tab(a).wait_text(&format!("{last} pre code .tok-keyword"), "fn").await?;
            // The complete reply is announced to screen readers, once; so are toasts and the
            // connection state.
            h.tab(a).wait_text("#announcer", "Done, see").await?;
            for live in ["#announcer", "#toasts", "#status"] {
                let polite = format!("return document.querySelector('{live}').getAttribute('aria-live')");
                assert_eq!(h.tab(a).js(&polite).await?, json!("polite"), "{live}");
            }
            // A link opens in a new tab and tells the page it opens nothing of this one.
            let link = h.tab(a).element(&format!("{last} a[href='https://example.com/docs']")).await?;
            assert_eq!(link.attr("target").await?.as_deref(), Some("_blank"));
            assert_eq!(link.attr("rel").await?.as_deref(), Some("noopener noreferrer"));
            // The copy button says whether the copy worked, then offers to copy again.
            let copy = format!("{last} .code .copy");
            for (clipboard, said) in [("Promise.reject(new Error('denied'))", "Copy failed"), ("Promise.resolve()", "Copied")] {
                h.tab(a).js(&format!("navigator.clipboard.writeText = () => {clipboard}; return true")).await?;
                h.tab(a).click(&copy).await?;
                h.tab(a).wait_text(&copy, said).await?;
                h.tab(a).wait(&format!("{copy} to offer Copy again"), &format!("return document.querySelector({}).innerText === 'Copy'", json!(copy))).await?;
            }
            // A message copies as written (the reply's markdown, not its rendering).
            h.tab(a).js("navigator.clipboard.writeText = (t) => { window.copied = t; return Promise.resolve(); }; return true").await?;
            h.tab(a).click(&format!("{last} .copy-message")).await?;
            h.tab(a).wait_text(&format!("{last} .copy-message"), "Copied").await?;
            assert_eq!(
                h.tab(a).js("return window.copied").await?,
                json!("Here is **bold** text.\n\n```rust\nfn main() { let x = 1; }\n```\n\nDone, see [the docs](https://example.com/docs).")
            );

            // The store holds what the tab shows.
            let token = token_of(h.tab(a)).await?;
            let store = stored(&h.server, &token, session).await;
            assert_eq!(store.len(), 4);
            assert_eq!(
                store[3].1,
                "Here is **bold** text.\n\n```rust\nfn main() { let x = 1; }\n```\n\nDone, see [the docs](https://example.com/docs)."
            );
            assert_eq!(store[3].2, "complete");
            // Every send of the client carried an idempotency key of its own.
            let (_, me) = h.server.get(&token, "/api/v1/auth/me").await;
            let user_id: uuid::Uuid = me["user"]["id"].as_str().unwrap().parse().unwrap();
            assert_eq!(h.server.state().store.count_send_keys(user_id).await.unwrap(), 2, "one key per send");

            // A second tab of the same login opens the chat from its address: the history is there.
            let b = h.open("b").await?;
            h.tab(b).share_login(h.tab(a)).await?;
            h.tab(b).driver.goto(h.server.url(&format!("/c/{session}"))).await?;
            h.tab(b).wait_online().await?;
            h.tab(b).wait_settled(4).await?;
            assert_eq!(h.tab(b).messages().await?, h.tab(a).messages().await?);

            // A slow reply streams into both tabs; Stop in one ends it in both, marked stopped.
            h.tab(a).send(&slow(60, 10)).await?;
            h.tab(b).wait_text("#streaming", "word3").await?;
            h.tab(a).wait_text("#streaming", "word3").await?;
            assert!(!h.tab(a).text("#announcer").await?.contains("word"), "a reply is not announced token by token");
            h.tab(b).click("#stop").await?;
            for tab in [a, b] {
                h.tab(tab).wait_gone("#streaming").await?;
                h.tab(tab).element("#messages article.message.assistant:last-of-type .badge.stopped").await?;
                h.tab(tab).element("#regenerate").await?;
            }
            let store = stored(&h.server, &token, session).await;
            let (_, partial, status) = store.last().unwrap();
            assert_eq!(status, "cancelled");
            let partial = partial.trim_end();
            assert!(partial.starts_with("word1 word2 word3") && !partial.contains("word60"), "{partial}");
            for tab in [a, b] {
                assert_eq!(&h.tab(tab).messages().await?.last().unwrap().1, partial);
            }

            // Esc stops a streaming reply as the Stop button does.
            h.tab(a).send(&slow(60, 10)).await?;
            h.tab(a).wait_text("#streaming", "word2").await?;
            h.tab(a).element("#composer").await?.send_keys(Key::Escape).await?;
            h.tab(a).wait_gone("#streaming").await?;
            h.tab(a).element("#messages article.message.assistant:last-of-type .badge.stopped").await?;
            assert_eq!(stored(&h.server, &token, session).await.last().unwrap().2, "cancelled");
            h.tab(b).wait_gone("#streaming").await?;

            // Reloading mid-reply shows what came so far, then the rest; nothing is lost.
            h.tab(a).send(&slow(40, 10)).await?;
            h.tab(a).wait_text("#streaming", "word2").await?;
            h.tab(a).driver.refresh().await?;
            h.tab(a).wait_online().await?;
            h.tab(a).wait_text("#streaming", "word").await?;
            let during = h.tab(a).text("#streaming").await?;
            assert!(!during.contains("word40"), "the reply was already over after the reload: {during}");
            h.tab(a).wait_settled(10).await?;
            let full = (1..=40).map(|i| format!("word{i}")).collect::<Vec<_>>().join(" ");
            assert_eq!(h.tab(a).messages().await?.last().unwrap().1, full);
            h.tab(b).wait_settled(10).await?;
            assert_eq!(h.tab(b).messages().await?.last().unwrap().1, full);
            assert_eq!(stored(&h.server, &token, session).await.last().unwrap().1, full);

            // The theme: dark when chosen, kept over a reload, light when chosen, and the
            // system's (light in headless Chromium) when that is chosen.
            let background = "return getComputedStyle(document.body).backgroundColor";
            let (dark, light) = (json!("rgb(17, 19, 24)"), json!("rgb(247, 247, 248)"));
            assert_eq!(h.tab(a).js(background).await?, light);
            h.tab(a).choose("#theme", "dark").await?;
            assert_eq!(h.tab(a).js(background).await?, dark);
            h.tab(a).driver.refresh().await?;
            h.tab(a).wait_online().await?;
            assert_eq!(h.tab(a).js(background).await?, dark, "the chosen theme outlives a reload");
            assert_eq!(h.tab(a).js("return document.querySelector('#theme').value").await?, json!("dark"));
            h.tab(a).choose("#theme", "light").await?;
            assert_eq!(h.tab(a).js(background).await?, light);
            h.tab(a).choose("#theme", "system").await?;
            assert_eq!(h.tab(a).js("return document.documentElement.hasAttribute('data-theme')").await?, json!(false));
            assert_eq!(h.tab(a).js(background).await?, light);

            // The wrong password's 401 is the only error either console saw.
            h.tab(a).assert_clean_console(&["/api/v1/auth/login"]).await?;
            h.tab(b).assert_clean_console(&[]).await?;
            Ok(())
        })
        .await;
}

#[tokio::test]
async fn tabs_share_renames_regenerations_edits_and_deletes() {
    let _one = ONE_AT_A_TIME.lock().await;
    let harness = Harness::start("tabs", &[]).await.expect("harness");
    harness
        .run(async |h| {
            let a = h.open("a").await?;
            h.tab(a).register("bob").await?;
            let b = h.open("b").await?;
            h.tab(b).share_login(h.tab(a)).await?;

            // A chat made (here over REST) shows in both tabs' lists; so does its new name.
            let session = h.server.create_session(&token_of(h.tab(a)).await?).await.id;
            let item = format!("#sessions li.session[data-id='{session}']");
            h.tab(b).element(&item).await?;
            h.tab(a).click(&item).await?;
            assert_eq!(h.tab(a).session_id().await?, session);
            h.tab(a).click(&format!("{item} .rename-button")).await?;
            let input = h.tab(a).element(&format!("{item} .rename-input")).await?;
            let focused = "return document.activeElement.classList.contains('rename-input')";
            h.tab(a).wait("the rename field to have the focus", focused).await?;
            input.clear().await?;
            input.send_keys("Trip planning").await?;
            input.send_keys(Key::Enter).await?;
            h.tab(b).wait_text(&item, "Trip planning").await?;
            h.tab(a).wait_text("#chat-title", "Trip planning").await?;

            h.tab(b).click(&item).await?;
            h.tab(a).send("first question [[mock echo]]").await?;
            for tab in [a, b] {
                h.tab(tab).wait_settled(2).await?;
            }

            // Regenerate in one tab: the old reply goes from both, the new one arrives in both.
            h.tab(a).send("pick a number [[mock tokens=6]]").await?;
            h.tab(b).wait_settled(4).await?;
            let old_reply = h.tab(b).messages().await?[3].1.clone();
            let old_id = h
                .tab(b)
                .js("return document.querySelector('#messages article.assistant:last-of-type').dataset.id")
                .await?;
            h.tab(a).click("#regenerate").await?;
            for tab in [a, b] {
                h.tab(tab)
                    .wait(
                        "the regenerated reply",
                        &format!(
                            "const l = document.querySelector('#messages article.assistant:last-of-type'); \
                             return !document.querySelector('#streaming') && !!l && l.dataset.id !== {old_id}"
                        ),
                    )
                    .await?;
                assert_eq!(h.tab(tab).count("#messages article.message").await?, 4);
            }
            let _ = old_reply;

            // Edit the last question in one tab: both show the new question and a new reply,
            // and the model was asked the new question, not the old one.
            h.tab(a).js("[...document.querySelectorAll('#messages .edit')].pop().click(); return true").await?;
            h.tab(a)
                .wait(
                    "the draft to hold the old text",
                    "return document.querySelector('#composer').value.startsWith('pick a number')",
                )
                .await?;
            let composer = h.tab(a).element("#composer").await?;
            composer.clear().await?;
            h.tab(a).send("what is the capital of France? [[mock echo]]").await?;
            for tab in [a, b] {
                h.tab(tab).wait_text("#messages", "capital of France").await?;
                h.tab(tab).wait_settled(4).await?;
                assert_eq!(h.tab(tab).messages().await?[2].1, "what is the capital of France? [[mock echo]]");
                assert_eq!(
                    h.tab(tab).messages().await?[3].1,
                    "what is the capital of France?",
                    "[{}] the reply to the edited question",
                    h.tab(tab).name
                );
                assert!(!h.tab(tab).text("#messages").await?.contains("pick a number"));
            }
            let asked = h.server.mock.stats().last_request.expect("the model was asked");
            let asked = asked["messages"].to_string();
            assert!(asked.contains("capital of France") && !asked.contains("pick a number"), "{asked}");
            let token = token_of(h.tab(a)).await?;
            let store = stored(&h.server, &token, session).await;
            assert_eq!(store.len(), 4);
            assert_eq!(store[2].1, "what is the capital of France? [[mock echo]]");

            // Delete asks first; confirmed in one tab, the chat leaves the other's list and view.
            h.tab(b).click(&format!("{item} .delete-button")).await?;
            h.tab(b).click(&format!("{item} .confirm-delete")).await?;
            for tab in [a, b] {
                h.tab(tab).wait_gone(&item).await?;
                h.tab(tab).wait_gone("#chat-title").await?;
            }
            let (status, _) = h.server.get(&token, &format!("/api/v1/chat/sessions/{session}")).await;
            assert_eq!(status, 404);

            h.tab(a).assert_clean_console(&[]).await?;
            h.tab(b).assert_clean_console(&[]).await?;
            Ok(())
        })
        .await;
}

#[tokio::test]
async fn hostile_markdown_shows_as_text_and_runs_nothing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let harness = Harness::start("xss", &[]).await.expect("harness");
    harness
        .run(async |h| {
            let a = h.open("a").await?;
            h.tab(a).register("mallory").await?;
            h.tab(a).click("#new-chat").await?;
            let attack = "<img src=x onerror=\"window.pwned=1\"> <script>window.pwned=2</script> \
                          [link](javascript:window.pwned=3) ![pic](http://127.0.0.1:9/x.png) [[mock echo]]";
            h.tab(a).send(attack).await?;
            h.tab(a).wait_settled(2).await?;
            let reply = "#messages article.assistant:last-of-type";
            h.tab(a).wait_text(reply, "<img src=x onerror=").await?;
            h.tab(a).wait_text(reply, "<script>window.pwned=2</script>").await?;
            h.tab(a).wait_text("#messages article.user", "<img src=x").await?;
            assert_eq!(h.tab(a).count("#messages img, #messages script").await?, 0);
            let hrefs = h
                .tab(a)
                .js("return [...document.querySelectorAll('#messages a')].map(a => a.getAttribute('href'))")
                .await?;
            assert!(!hrefs.to_string().contains("javascript:"), "{hrefs}");
            // Clicking the would-be script link does nothing either.
            let link = h.tab(a).js("return !!document.querySelector('#messages a')").await?;
            if link == json!(true) {
                h.tab(a).click("#messages a").await?;
            }
            assert_eq!(h.tab(a).js("return window.pwned === undefined").await?, json!(true));
            h.tab(a).assert_clean_console(&[]).await?;
            Ok(())
        })
        .await;
}

#[tokio::test]
async fn phone_width_mock_banner_limits_and_expired_login() {
    let _one = ONE_AT_A_TIME.lock().await;
    // The built-in mock model, and a daily quota of two messages.
    let vars = [
        ("LLM_MOCK", "true"),
        ("MOCK_FIRST_TOKEN_MS", "5"),
        ("MOCK_TOKENS_PER_SEC", "1000"),
        ("MOCK_REPLY_TOKENS", "30"),
        ("CHAT_DAILY_MESSAGE_QUOTA", "2"),
    ];
    let harness = Harness::start("phone", &vars).await.expect("harness");
    harness
        .run(async |h| {
            let a = h.open("phone").await?;
            h.tab(a).driver.set_window_rect(0, 0, 390, 844).await?;
            h.tab(a).register("carol").await?;
            h.tab(a).wait_text("#mock-banner", "built-in mock model").await?;
            h.tab(a).wait_text("#quota", "2 messages left").await?;

            // The list hides behind the menu button at this width.
            let sidebar_in_view = "return document.querySelector('#sidebar').getBoundingClientRect().left >= 0";
            assert_eq!(h.tab(a).js(sidebar_in_view).await?, json!(false));
            h.tab(a).click(".chat-head .menu").await?;
            h.tab(a).wait("the list to slide in", sidebar_in_view).await?;
            h.tab(a).click("#new-chat").await?;
            h.tab(a).wait("the list to slide away", &sidebar_in_view.replace(">= 0", "< 0")).await?;
            h.tab(a).send("a question that wraps on a narrow screen, with a long_unbroken_identifier_that_must_not_push_the_page_sideways_at_all").await?;
            h.tab(a).wait_settled(2).await?;
            let overflow = "return document.documentElement.scrollWidth > document.documentElement.clientWidth";
            assert_eq!(h.tab(a).js(overflow).await?, json!(false), "the page scrolls sideways at phone width");

            // The list closes on Esc, on a tap beside it, and on choosing a session (even the
            // one already open).
            let slid_away = sidebar_in_view.replace(">= 0", "< 0");
            h.tab(a).click(".chat-head .menu").await?;
            h.tab(a).wait("the list to slide in", sidebar_in_view).await?;
            h.tab(a).element("#new-chat").await?.send_keys(Key::Escape).await?;
            h.tab(a).wait("Esc to close the list", &slid_away).await?;
            h.tab(a).click(".chat-head .menu").await?;
            h.tab(a).wait("the list to slide in", sidebar_in_view).await?;
            let beside = "return document.elementFromPoint(window.innerWidth - 10, window.innerHeight / 2).id";
            assert_eq!(h.tab(a).js(beside).await?, json!("backdrop"), "beside the list is the backdrop");
            h.tab(a).js("document.elementFromPoint(window.innerWidth - 10, window.innerHeight / 2).click(); return true").await?;
            h.tab(a).wait("a tap beside the list to close it", &slid_away).await?;
            h.tab(a).click(".chat-head .menu").await?;
            h.tab(a).wait("the list to slide in", sidebar_in_view).await?;
            h.tab(a).click("#sidebar li.active").await?;
            h.tab(a).wait("choosing the open session to close the list", &slid_away).await?;

            // The composer grows with its text, up to a point.
            let height = "return document.querySelector('#composer').clientHeight";
            let two = h.tab(a).js(height).await?.as_i64().unwrap_or(0);
            h.tab(a).fill_composer("one\ntwo\nthree\nfour\nfive").await?;
            h.tab(a).wait("the composer to grow", &format!("return document.querySelector('#composer').clientHeight > {two}")).await?;
            h.tab(a).fill_composer(&"line\n".repeat(30)).await?;
            let tall = h.tab(a).js(height).await?.as_i64().unwrap_or(0);
            assert!(tall < two * 5, "the composer stops growing at 8 lines: {tall} px from {two} px");
            h.tab(a).fill_composer("").await?;
            h.tab(a).wait("the composer to shrink back", &format!("return document.querySelector('#composer').clientHeight === {two}")).await?;

            // The composer and its button fit on the screen under the (wrapped) banner.
            let fits = "return document.querySelector('#send').getBoundingClientRect().bottom <= window.innerHeight";
            assert_eq!(h.tab(a).js(fits).await?, json!(true), "the send button is off the screen");

            // The quota runs out: the composer says why and takes no more.
            h.tab(a).send("second").await?;
            h.tab(a).wait_settled(4).await?;
            h.tab(a).wait_text("#quota", "0 messages left").await?;
            h.tab(a).wait_text("#blocked", "quota").await?;
            h.tab(a).wait("the composer to be disabled", "return document.querySelector('#composer').disabled").await?;
            // Even a reload (the quota comes from the server) keeps it closed.
            h.tab(a).driver.refresh().await?;
            h.tab(a).wait_online().await?;
            h.tab(a).wait_text("#blocked", "quota").await?;
            assert_eq!(h.tab(a).count("#messages article.message").await?, 4);

            // An expired login sends the tab back to the login screen with a notice.
            let user = h.tab(a).js("return JSON.parse(localStorage.getItem('relay.auth'))[0]").await?;
            let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
            let now = chrono::Utc::now().timestamp();
            let claims = json!({"sub": user["id"], "exp": now - 3600, "iat": now - 7200, "username": "carol", "relay_account": true});
            let expired = jsonwebtoken::encode(
                &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(common::SECRET.as_bytes()),
            )?;
            h.tab(a)
                .js_with("localStorage.setItem('relay.auth', JSON.stringify([arguments[0], arguments[1]]))", vec![user, json!(expired)])
                .await?;
            h.tab(a).driver.refresh().await?;
            h.tab(a).wait_text("#login-notice", "expired").await?;
            h.tab(a).element("#login-submit").await?;
            assert_eq!(h.tab(a).js("return localStorage.getItem('relay.auth')").await?, Value::Null);
            h.tab(a).assert_clean_console(&["401"]).await?;
            Ok(())
        })
        .await;
}

/// Right after login the composer is ready, and the first message starts the chat: "New
/// chat" stores no session until something is sent in it.
#[tokio::test]
async fn the_first_message_starts_a_chat_and_new_chat_stores_nothing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let harness = Harness::start("first-use", &[]).await.expect("harness");
    harness
        .run(async |h| {
            let a = h.open("a").await?;
            h.tab(a).register("newcomer").await?;
            h.tab(a).wait("the composer to have the focus", "return document.activeElement.id === 'composer'").await?;
            let token = token_of(h.tab(a)).await?;
            let count = async || -> Result<u64> {
                let (_, list) = h.server.get(&token, "/api/v1/chat/sessions").await;
                Ok(list["total"].as_u64().unwrap_or(u64::MAX))
            };
            assert_eq!(count().await?, 0);
            h.tab(a).element("#composer").await?.send_keys("hello, first message [[mock echo]]").await?;
            h.tab(a).element("#composer").await?.send_keys(Key::Enter).await?;
            let session = h.tab(a).session_id().await?;
            h.tab(a).wait_settled(2).await?;
            assert_eq!(h.tab(a).messages().await?[1].1, "hello, first message");
            assert_eq!(count().await?, 1);
            h.tab(a).element(&format!("#sessions li.session[data-id='{session}']")).await?;

            // New chat, twice: a composer for the next chat, nothing stored.
            for _ in 0..2 {
                h.tab(a).click("#new-chat").await?;
                h.tab(a).element("#new-chat-hint").await?;
                h.tab(a)
                    .wait("the composer to have the focus", "return document.activeElement.id === 'composer'")
                    .await?;
            }
            assert_eq!(h.tab(a).js("return location.pathname").await?, json!("/"));
            assert_eq!(count().await?, 1, "New chat stored no session");
            h.tab(a).send("a second chat [[mock echo]]").await?;
            h.tab(a).wait_settled(2).await?;
            assert_ne!(h.tab(a).session_id().await?, session);
            assert_eq!(count().await?, 2);
            Ok(())
        })
        .await;
}

/// The address is the navigation: Back and Forward move between the sessions opened; a
/// link `/c/<id>` opens any session of the user, even one far past the list's first page;
/// an unknown id, or another user's, says "not found" and leads back to the start.
#[tokio::test]
async fn back_forward_and_links_open_any_session_of_the_user() {
    let _one = ONE_AT_A_TIME.lock().await;
    let harness = Harness::start("navigation", &[]).await.expect("harness");
    harness
        .run(async |h| {
            let a = h.open("a").await?;
            h.tab(a).register("walker").await?;
            let token = token_of(h.tab(a)).await?;
            // 32 sessions: the first is past the list's first page (30, newest first).
            let mut ids = Vec::new();
            for i in 0..32 {
                let id = h.server.create_session(&token).await.id;
                assert_eq!(h.server.rename(&token, id, &format!("chat {i}")).await.status(), 200);
                ids.push(id);
            }
            h.tab(a).driver.refresh().await?;
            h.tab(a).wait_online().await?;
            let title = |i: usize| format!("chat {i}");
            let item = |i: usize| format!("#sessions li.session[data-id='{}']", ids[i]);
            h.tab(a).click(&item(31)).await?;
            h.tab(a).wait_text("#chat-title", &title(31)).await?;
            h.tab(a).click(&item(30)).await?;
            h.tab(a).wait_text("#chat-title", &title(30)).await?;
            assert_eq!(h.tab(a).session_id().await?, ids[30]);

            h.tab(a).driver.back().await?;
            h.tab(a).wait_text("#chat-title", &title(31)).await?;
            assert_eq!(h.tab(a).session_id().await?, ids[31]);
            h.tab(a).driver.back().await?;
            h.tab(a).wait_gone("#chat-title").await?;
            h.tab(a).driver.forward().await?;
            h.tab(a).wait_text("#chat-title", &title(31)).await?;
            h.tab(a).driver.forward().await?;
            h.tab(a).wait_text("#chat-title", &title(30)).await?;

            // Sessions are links: the keyboard reaches them, and Enter opens one.
            let link = h.tab(a).element(&format!("{} a.title", item(29))).await?;
            assert_eq!(link.attr("href").await?, Some(format!("/c/{}", ids[29])));
            link.focus().await?;
            link.send_keys(Key::Enter).await?;
            h.tab(a).wait_text("#chat-title", &title(29)).await?;
            h.tab(a).wait("the composer to have the focus", "return document.activeElement.id === 'composer'").await?;

            // A link to the oldest session, which the list has not loaded.
            assert_eq!(h.tab(a).js(&format!("return !!document.querySelector(\"{}\")", item(0))).await?, json!(false));
            h.tab(a).driver.goto(h.server.url(&format!("/c/{}", ids[0]))).await?;
            h.tab(a).wait_online().await?;
            h.tab(a).wait_text("#chat-title", &title(0)).await?;

            // Unknown, and another user's: not found, back at the start.
            let (other, _) = h.server.register("stranger").await;
            let theirs = h.server.create_session(&other).await.id;
            for id in [uuid::Uuid::new_v4(), theirs] {
                h.tab(a).driver.goto(h.server.url(&format!("/c/{id}"))).await?;
                h.tab(a).wait_online().await?;
                h.tab(a).wait_text(".toasts", "not found").await?;
                h.tab(a).wait("the address to go back to the start", "return location.pathname === '/'").await?;
                assert_eq!(h.tab(a).js("return !!document.querySelector('#chat-title')").await?, json!(false));
            }

            // The rest of the list loads when its end comes into view.
            assert_eq!(h.tab(a).count("#sessions li.session").await?, 30);
            h.tab(a).js("document.querySelector('#more-sessions').scrollIntoView(); return true").await?;
            h.tab(a).element(&item(0)).await?;
            assert_eq!(h.tab(a).count("#sessions li.session").await?, 32);
            h.tab(a).wait_gone("#more-sessions").await?;
            Ok(())
        })
        .await;
}

/// Logging out while a reply streams closes the WebSocket at once, forgets the drafts,
/// and nothing of the first user (a frame of the reply still running, a session, a draft)
/// reaches the next user of the same tab.
#[tokio::test]
async fn logout_leaves_nothing_for_the_next_user() {
    let _one = ONE_AT_A_TIME.lock().await;
    let harness = Harness::start("logout", &[]).await.expect("harness");
    harness
        .run(async |h| {
            let a = h.open("a").await?;
            h.tab(a).register("ann").await?;
            h.tab(a).click("#new-chat").await?;
            h.tab(a).send(&slow(200, 10)).await?;
            h.tab(a).wait_text("#streaming", "word2").await?;
            h.tab(a).element("#composer").await?.send_keys("ann's unsent draft").await?;
            let drafts = "return Object.keys(localStorage).filter(k => k.startsWith('relay.draft.')).length";
            assert_eq!(h.tab(a).js(drafts).await?, json!(1), "the draft is kept while logged in");
            assert_eq!(h.server.state().metrics.ws_connections.get(), 1);

            h.tab(a).click("#logout").await?;
            h.tab(a).wait_text("#login-submit", "Log in").await?;
            assert_eq!(h.tab(a).js(drafts).await?, json!(0), "drafts are forgotten at logout");
            let mut open = 1;
            for _ in 0..20 {
                open = h.server.state().metrics.ws_connections.get();
                if open == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert_eq!(open, 0, "the WebSocket closes at logout, not at its next frame");

            // The next user of the tab, while ann's reply is still being written.
            h.tab(a).register("bob").await?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let page = h.tab(a).text("body").await?;
            assert!(!page.contains("word1") && !page.contains("unsent draft"), "ann's things reached bob: {page}");
            assert_eq!(h.tab(a).js("return document.querySelectorAll('#sessions li.session').length").await?, json!(0));
            assert_eq!(
                h.tab(a)
                    .js("return document.querySelector('#composer') ? document.querySelector('#composer').value : ''")
                    .await?,
                json!("")
            );
            Ok(())
        })
        .await;
}

#[tokio::test]
async fn a_refused_send_gives_its_text_back() {
    let _one = ONE_AT_A_TIME.lock().await;
    // One send a minute: the second is refused.
    let harness = Harness::start("refused", &[("CHAT_RATE_LIMIT_PER_MINUTE", "1")]).await.expect("harness");
    harness
        .run(async |h| {
            let a = h.open("a").await?;
            h.tab(a).register("dora").await?;
            h.tab(a).click("#new-chat").await?;
            h.tab(a).send("the first message").await?;
            let session = h.tab(a).session_id().await?;
            h.tab(a).wait_settled(2).await?;
            h.tab(a).send("a carefully written second message").await?;

            // Refused: the reason with the wait, and the text back in the composer, kept as
            // the session's draft across a reload; nothing stored.
            h.tab(a).wait_text("#blocked", "Sending too fast; try again in").await?;
            let composer_says = "return document.querySelector('#composer').value";
            h.tab(a)
                .wait("the text to come back", &format!("{composer_says} === 'a carefully written second message'"))
                .await?;
            h.tab(a).driver.refresh().await?;
            h.tab(a).wait_online().await?;
            h.tab(a).wait_settled(2).await?;
            assert_eq!(h.tab(a).js(composer_says).await?, json!("a carefully written second message"));
            let token = token_of(h.tab(a)).await?;
            assert_eq!(stored(&h.server, &token, session).await.len(), 2);
            // The refusal is explained in the page, not as a console error.
            h.tab(a).assert_clean_console(&[]).await?;
            Ok(())
        })
        .await;
}

#[tokio::test]
async fn a_dropped_connection_comes_back_and_the_reply_continues() {
    let _one = ONE_AT_A_TIME.lock().await;
    let harness = Harness::start("reconnect", &[]).await.expect("harness");
    let relay = Relay::start(harness.server.addr).await.expect("relay");
    harness
        .run(async |h| {
            let a = h.open_at("a", relay.url.clone()).await?;
            h.tab(a).register("erin").await?;
            h.tab(a).click("#new-chat").await?;
            // Every state the status indicator shows, in order.
            h.tab(a)
                .js("window.statuses = []; const s = () => document.querySelector('#status'); \
                     new MutationObserver(() => window.statuses.push(s().innerText)) \
                     .observe(document.querySelector('#sidebar'), {subtree: true, childList: true, characterData: true});")
                .await?;
            h.tab(a).send(&slow(50, 10)).await?;
            let session = h.tab(a).session_id().await?;
            h.tab(a).wait_text("#streaming", "word5").await?;

            // The network drops mid-reply: the tab says so, reconnects by itself (no reload),
            // and the reply reappears whole and continues to its end.
            let before = relay.accepted();
            relay.cut();
            h.tab(a)
                .wait("the tab to notice", "return window.statuses.some(s => s.startsWith('Offline'))")
                .await?;
            h.tab(a).wait_online().await?;
            assert!(relay.accepted() > before, "the tab did not open a new connection");
            h.tab(a).wait_settled(2).await?;
            let full = (1..=50).map(|i| format!("word{i}")).collect::<Vec<_>>().join(" ");
            assert_eq!(h.tab(a).messages().await?[1].1, full, "the reply shown after the reconnect");
            let token = token_of(h.tab(a)).await?;
            let store = stored(&h.server, &token, session).await;
            assert_eq!((store[1].1.as_str(), store[1].2.as_str()), (full.as_str(), "complete"));
            assert_eq!(h.tab(a).js("return location.pathname").await?, json!(format!("/c/{session}")));

            h.tab(a).assert_clean_console(&[]).await?;

            // Closed for reading too slowly (4429): the tab says why and comes back, not at
            // once but after a wait.
            let before = relay.accepted();
            h.tab(a).js("window.statuses = []; return true").await?;
            relay.close_with(4429);
            h.tab(a).wait_text(".toasts", "read too slowly").await?;
            h.tab(a).wait_online().await?;
            assert!(relay.accepted() > before, "the tab did not open a new connection");
            let waited = "return window.statuses.some(s => /retrying in [2-9]/.test(s))";
            assert_eq!(h.tab(a).js(waited).await?, json!(true), "it waited two seconds or more before trying again");

            // While the server cannot be reached, the countdown to the next attempt ticks;
            // "Retry now" tries at once. (The browser logs each failed attempt.)
            relay.refuse(true);
            relay.cut();
            let seconds = "const m = (document.querySelector('#status').innerText || '').match(/retrying in (\\d+)s/);";
            let countdown = format!("{seconds} return m ? Number(m[1]) : -1");
            let long_wait = format!("{seconds} return !!m && Number(m[1]) >= 3");
            let countdown = countdown.as_str();
            h.tab(a).wait("a wait of 3 s or more", &long_wait).await?;
            let first = h.tab(a).js(countdown).await?.as_i64().unwrap_or(-1);
            tokio::time::sleep(Duration::from_millis(1200)).await;
            let second = h.tab(a).js(countdown).await?.as_i64().unwrap_or(-1);
            assert!(second >= 0 && second < first, "the countdown ticks: {first} s, then {second} s");
            h.tab(a).wait("another wait of 3 s or more", &long_wait).await?;
            let shown = h.tab(a).js(countdown).await?.as_i64().unwrap_or(-1);
            // A session made meanwhile (its event went to no connection of this tab).
            let away = h.server.create_session(&token).await.id;
            assert_eq!(h.server.rename(&token, away, "made while away").await.status(), 200);
            relay.refuse(false);
            let asked = Instant::now();
            h.tab(a).click("#retry-now").await?;
            h.tab(a).wait_online().await?;
            assert!(
                asked.elapsed() < Duration::from_secs((shown - 1).max(1) as u64),
                "online {:?} after Retry now, where the countdown said {shown} s",
                asked.elapsed()
            );
            // Back online, the list is loaded again.
            h.tab(a).wait_text(&format!("#sessions li.session[data-id='{away}']"), "made while away").await?;
            h.tab(a).assert_clean_console(&["/api/v1/ws' failed", "already in CLOSING or CLOSED state"]).await?;
            Ok(())
        })
        .await;
}

/// axe-core's serious and critical findings on the page as it is now (none expected):
/// one line per rule, with the first elements it names.
async fn accessibility_findings(tab: &Tab, axe: &str) -> Result<Vec<String>> {
    tab.js(axe).await?;
    let script = "const done = arguments[arguments.length - 1]; \
        axe.run(document, { resultTypes: ['violations'] }).then(r => done(r.violations \
          .filter(v => v.impact === 'serious' || v.impact === 'critical') \
          .map(v => `${v.impact} ${v.id}: ${v.help} — ` + v.nodes.slice(0, 4) \
            .map(n => n.target.join(' ') + ' (' + (n.failureSummary || '').replace(/\\s+/g, ' ') + ')').join('; ')))) \
          .catch(e => done(['axe failed: ' + e]));";
    let found = tab.driver.execute_async(script, Vec::new()).await?.json().clone();
    Ok(serde_json::from_value(found)?)
}

/// axe-core's script, from `RELAY_AXE_JS`.
fn axe_source() -> String {
    let Ok(axe_path) = std::env::var("RELAY_AXE_JS") else {
        panic!("RELAY_AXE_JS must name axe-core's axe.min.js (scripts/test.sh installs it with npm)");
    };
    std::fs::read_to_string(&axe_path).expect("axe.min.js readable")
}

#[tokio::test]
async fn screens_pass_axe_in_both_themes_and_at_phone_width() {
    let _one = ONE_AT_A_TIME.lock().await;
    let axe = axe_source();
    let vars = [("LLM_MOCK", "true"), ("MOCK_FIRST_TOKEN_MS", "5"), ("MOCK_TOKENS_PER_SEC", "2000")];
    let harness = Harness::start("axe", &vars).await.expect("harness");
    harness
        .run(async |h| {
            let a = h.open("a").await?;
            let mut findings = Vec::new();
            let mut check = async |tab: &Tab, screen: &str| -> Result<()> {
                for finding in accessibility_findings(tab, &axe).await? {
                    findings.push(format!("{screen}: {finding}"));
                }
                Ok(())
            };
            h.tab(a).element("#login-submit").await?;
            check(h.tab(a), "login").await?;
            h.tab(a).keep_screenshot("login").await?;
            h.tab(a).register("ada").await?;
            h.tab(a).element("#new-chat-hint").await?;
            check(h.tab(a), "empty chat").await?;
            // The built-in mock answers with its demo document: the README's screenshots show
            // a real conversation, no test directive on screen.
            h.tab(a).send("What can you show me?").await?;
            h.tab(a).wait_settled(2).await?;
            h.tab(a)
                .wait("the reply announced", "return document.querySelector('#announcer').innerText.length > 0")
                .await?;
            // A reply longer than a few sentences is announced by its start, not read out whole.
            let announced = h.tab(a).text("#announcer").await?;
            assert!(announced.starts_with("Hello from the built-in mock model"), "no markdown syntax: {announced}");
            assert!(announced.ends_with("The reply continues in the conversation."), "{announced}");
            assert!(announced.chars().count() < 700, "{} characters announced", announced.chars().count());
            check(h.tab(a), "chat with a reply").await?;
            h.tab(a).keep_screenshot("chat").await?;
            h.tab(a).choose("#theme", "dark").await?;
            check(h.tab(a), "chat with a reply, dark").await?;
            h.tab(a).keep_screenshot("chat-dark").await?;
            h.tab(a).driver.set_window_rect(0, 0, 390, 844).await?;
            h.tab(a).click(".chat-head .menu").await?;
            h.tab(a)
                .wait(
                    "the list to slide in",
                    "return document.querySelector('#sidebar').getBoundingClientRect().left >= 0",
                )
                .await?;
            check(h.tab(a), "phone, list open, dark").await?;
            h.tab(a).choose("#theme", "light").await?;
            check(h.tab(a), "phone, list open, light").await?;
            h.tab(a).click("#sidebar li.active").await?;
            h.tab(a)
                .wait(
                    "the list to slide away",
                    "return document.querySelector('#sidebar').getBoundingClientRect().left < 0",
                )
                .await?;
            h.tab(a).keep_screenshot("chat-phone").await?;
            if !findings.is_empty() {
                bail!("axe found serious or critical problems:\n{}", findings.join("\n"));
            }
            Ok(())
        })
        .await;
}

#[tokio::test]
async fn replaced_replies_and_questions_can_be_browsed() {
    let _one = ONE_AT_A_TIME.lock().await;
    let harness = Harness::start("versions", &[]).await.expect("harness");
    harness
        .run(async |h| {
            let a = h.open("a").await?;
            h.tab(a).register("vera").await?;
            // Stamped replies differ from one generation to the next.
            h.tab(a).send("question one [[mock stamp tokens=3]]").await?;
            h.tab(a).wait_settled(2).await?;
            let reply = "#messages article.assistant .content";
            let first = h.tab(a).text(reply).await?;
            assert!(!first.is_empty());
            assert_eq!(h.tab(a).count(".versions").await?, 0, "nothing replaced yet");

            h.tab(a).click("#regenerate").await?;
            h.tab(a)
                .wait(
                    "the new reply",
                    &format!(
                        "const r = document.querySelector({}); return !document.querySelector('#streaming') && !!r && r.innerText !== {}",
                        json!(reply),
                        json!(first)
                    ),
                )
                .await?;
            let second = h.tab(a).text(reply).await?;
            h.tab(a).wait_text("#messages article.assistant .version-count", "2/2").await?;
            h.tab(a).click("#messages article.assistant .previous-version").await?;
            h.tab(a).wait_text("#messages article.assistant .version-count", "1/2").await?;
            assert_eq!(h.tab(a).text(reply).await?, first, "the first reply, browsed back to");
            assert_eq!(h.tab(a).count("#regenerate").await?, 0, "an old version is only read");
            h.tab(a).click("#messages article.assistant .next-version").await?;
            h.tab(a).wait_text("#messages article.assistant .version-count", "2/2").await?;
            assert_eq!(h.tab(a).text(reply).await?, second);

            // Editing the question keeps the old one, with the reply it had.
            h.tab(a).click("#messages article.user .edit").await?;
            h.tab(a).wait("the text to edit", "return document.querySelector('#composer').value.startsWith('question one')").await?;
            h.tab(a).fill_composer("question two [[mock stamp tokens=3]]").await?;
            h.tab(a).element("#composer").await?.send_keys(Key::Enter).await?;
            h.tab(a).wait_text("#messages article.user .content", "question two").await?;
            h.tab(a).wait_settled(2).await?;
            h.tab(a).wait_text("#messages article.user .version-count", "2/2").await?;
            h.tab(a).click("#messages article.user .previous-version").await?;
            h.tab(a).wait_text("#messages article.user .version-count", "1/2").await?;
            let shown = h.tab(a).messages().await?;
            assert_eq!(shown.len(), 2, "the old question and its last reply: {shown:?}");
            assert!(shown[0].1.starts_with("question one"), "{shown:?}");
            assert_eq!(shown[1].1, second, "the reply the old question had last");

            // An earlier question can be edited too: everything after it is replaced.
            h.tab(a).click("#messages article.user .next-version").await?;
            h.tab(a).wait_text("#messages article.user .version-count", "2/2").await?;
            h.tab(a).send("question three [[mock stamp tokens=3]]").await?;
            h.tab(a).wait_settled(4).await?;
            h.tab(a).click("#messages article.user .edit").await?;
            h.tab(a).wait("the text to edit", "return document.querySelector('#composer').value.startsWith('question two')").await?;
            h.tab(a).fill_composer("question four [[mock stamp tokens=3]]").await?;
            h.tab(a).element("#composer").await?.send_keys(Key::Enter).await?;
            h.tab(a).wait_text("#messages article.user .content", "question four").await?;
            h.tab(a).wait_settled(2).await?;
            let shown = h.tab(a).messages().await?;
            assert!(shown[0].1.starts_with("question four") && shown[1].0 == "assistant", "{shown:?}");
            let session = h.tab(a).session_id().await?;
            let live = stored(&h.server, &token_of(h.tab(a)).await?, session).await;
            assert_eq!(live.len(), 2, "the store keeps the edited question and its answer live: {live:?}");

            // The conversation that edit replaced is one version, from its question to its
            // end (question three is not a version of the first question); the same after a
            // reload, from the server's snapshot.
            for pass in ["live", "after a reload"] {
                h.tab(a).wait_text("#messages article.user .version-count", "3/3").await?;
                h.tab(a).click("#messages article.user .previous-version").await?;
                h.tab(a).wait_text("#messages article.user .version-count", "2/3").await?;
                let shown = h.tab(a).messages().await?;
                let questions: Vec<&str> =
                    shown.iter().filter(|m| m.0 == "user").map(|m| m.1.split(' ').take(2).last().unwrap_or("")).collect();
                assert_eq!(questions, ["two", "three"], "{pass}: {shown:?}");
                assert_eq!(shown.len(), 4, "{pass}: each question with its reply: {shown:?}");
                h.tab(a).click("#messages article.user .previous-version").await?;
                h.tab(a).wait_text("#messages article.user .version-count", "1/3").await?;
                assert!(h.tab(a).messages().await?[0].1.starts_with("question one"), "{pass}");
                h.tab(a).driver.refresh().await?;
                h.tab(a).wait_online().await?;
                h.tab(a).wait_settled(2).await?;
            }
            h.tab(a).assert_clean_console(&[]).await
        })
        .await;
}

/// A long session opens at its end; older messages load when the top comes into view, and
/// the view stays where it was.
#[tokio::test]
async fn older_messages_load_as_the_top_comes_into_view() {
    let _one = ONE_AT_A_TIME.lock().await;
    let harness = Harness::start("older", &[]).await.expect("harness");
    harness
        .run(async |h| {
            let a = h.open("a").await?;
            h.tab(a).register("olga").await?;
            let token = token_of(h.tab(a)).await?;
            let session = h.server.create_session(&token).await.id;
            let mut ws = h.server.ws(&token).await;
            ws.send(json!({"type": "subscribe", "session_id": session})).await;
            ws.recv_until(|f| matches!(f, relay_protocol::ServerFrame::Subscribed { .. })).await;
            // 55 exchanges: 110 messages, more than a snapshot's 100.
            for i in 0..55 {
                ws.send(json!({"type": "send", "session_id": session, "content": format!("question {i} [[mock tokens=1]]")}))
                    .await;
                ws.recv_until(common::is_done).await;
            }
            h.tab(a).driver.goto(h.server.url(&format!("/c/{session}"))).await?;
            h.tab(a).wait_online().await?;
            h.tab(a).wait_text("#messages", "question 54").await?;
            assert_eq!(h.tab(a).count("#messages article.message").await?, 100);
            let at_bottom = "const m = document.querySelector('#messages'); return m.scrollTop + m.clientHeight >= m.scrollHeight - 60";
            h.tab(a).wait("the view at the end", at_bottom).await?;
            let first_shown = "return document.querySelector('#messages article.message').dataset.id";
            let anchor = h.tab(a).js(first_shown).await?;

            h.tab(a).js("document.querySelector('#messages').scrollTop = 0; return true").await?;
            h.tab(a).wait("the older messages", "return document.querySelectorAll('#messages article.message').length === 110").await?;
            h.tab(a).wait_gone("#older").await?;
            assert!(h.tab(a).text("#messages article.message").await?.contains("question 0"));
            // The message that was at the top is still in view, not pushed away.
            let anchor_in_view = format!(
                "const m = document.querySelector('#messages').getBoundingClientRect(); \
                 const e = document.querySelector('article[data-id=\"' + {anchor} + '\"]').getBoundingClientRect(); \
                 return e.bottom > m.top && e.top < m.bottom"
            );
            assert_eq!(h.tab(a).js(&anchor_in_view).await?, json!(true), "the view jumped");
            Ok(())
        })
        .await;
}

/// A reply streaming in is followed to its end while the view is there, and left alone once
/// the reader scrolls up to read.
#[tokio::test]
async fn the_view_follows_a_reply_only_from_the_end() {
    let _one = ONE_AT_A_TIME.lock().await;
    let harness = Harness::start("follow", &[]).await.expect("harness");
    harness
        .run(async |h| {
            let a = h.open("a").await?;
            h.tab(a).register("fol").await?;
            h.tab(a).send("Tell me a lot [[mock demo tokens=3000 tps=150]]").await?;
            let tall = "const m = document.querySelector('#messages'); \
                        return !!document.querySelector('#streaming') && m.scrollHeight > m.clientHeight + 600 && m.scrollHeight";
            let height = h.tab(a).wait("a reply taller than the view", tall).await?.as_f64().unwrap_or_default();
            // Sampled as it grows: each time the reply is taller, the view is at its end.
            for step in 1..=3 {
                let at_end_of_taller = format!(
                    "const m = document.querySelector('#messages'); return !!document.querySelector('#streaming') \
                     && m.scrollHeight > {} && m.scrollTop > 0 && m.scrollTop + m.clientHeight >= m.scrollHeight - 60",
                    height + 400.0 * f64::from(step)
                );
                h.tab(a).wait("the view at the end of a longer reply", &at_end_of_taller).await?;
            }
            // Scrolled up to read: the reply goes on growing below, the view stays.
            h.tab(a).js("document.querySelector('#messages').scrollTop = 0; return true").await?;
            let grown = h.tab(a).js("return document.querySelector('#messages').scrollHeight").await?;
            let later = format!("return document.querySelector('#messages').scrollHeight > {grown} + 400");
            h.tab(a).wait("the reply growing", &later).await?;
            let top = h.tab(a).js("return document.querySelector('#messages').scrollTop").await?;
            anyhow::ensure!(top.as_f64().is_some_and(|t| t < 50.0), "the view was pulled down to {top}");
            anyhow::ensure!(h.tab(a).count("#streaming").await? == 1, "the reply ended too soon for the test");
            // Back at the end, the view follows again.
            h.tab(a).js("const m = document.querySelector('#messages'); m.scrollTop = m.scrollHeight; return true").await?;
            let back = h.tab(a).js("return document.querySelector('#messages').scrollHeight").await?;
            let followed = format!(
                "const m = document.querySelector('#messages'); return !!document.querySelector('#streaming') \
                 && m.scrollHeight > {back} + 400 && m.scrollTop + m.clientHeight >= m.scrollHeight - 60"
            );
            h.tab(a).wait("the view following again", &followed).await?;
            Ok(())
        })
        .await;
}

/// While a reply streams in, what is already written stays put: a selection in a finished
/// paragraph survives the next pieces (each finished block is drawn once).
#[tokio::test]
async fn a_selection_survives_the_rest_of_the_reply() {
    let _one = ONE_AT_A_TIME.lock().await;
    let harness = Harness::start("selection", &[]).await.expect("harness");
    harness
        .run(async |h| {
            let a = h.open("a").await?;
            h.tab(a).register("sel").await?;
            let words: Vec<String> = (1..=60).map(|i| format!("word{i}")).collect();
            h.tab(a)
                .send(&format!("First paragraph stays put.\n\nThen {} [[mock echo tps=20]]", words.join(" ")))
                .await?;
            h.tab(a).wait_text("#streaming", "word3").await?;
            let selected = h
                .tab(a)
                .js("const p = document.querySelector('#streaming p'); const r = document.createRange(); \
                     r.selectNodeContents(p); getSelection().removeAllRanges(); getSelection().addRange(r); \
                     window.selectedParagraph = p; return getSelection().toString()")
                .await?;
            assert_eq!(selected, json!("First paragraph stays put."));
            h.tab(a).wait_text("#streaming", "word30").await?;
            let kept =
                h.tab(a).js("return [getSelection().toString(), document.contains(window.selectedParagraph)]").await?;
            assert_eq!(kept, json!(["First paragraph stays put.", true]), "the selection was lost");
            Ok(())
        })
        .await;
}

/// Ctrl+K opens the search box; typed words find the user's messages with the match marked;
/// choosing a result opens its session at the message, loading older messages until it is
/// there (it is older than the snapshot's 100), marked and focused. The box passes axe.
#[tokio::test]
async fn search_opens_a_session_at_the_message_found() {
    let _one = ONE_AT_A_TIME.lock().await;
    let harness = Harness::start("search", &[]).await.expect("harness");
    let axe = axe_source();
    harness
        .run(async |h| {
            let a = h.open("a").await?;
            h.tab(a).register("sam").await?;
            let token = token_of(h.tab(a)).await?;
            let long = h.server.create_session(&token).await.id;
            let mut ws = h.server.ws(&token).await;
            ws.send(json!({"type": "subscribe", "session_id": long})).await;
            ws.recv_until(|f| matches!(f, relay_protocol::ServerFrame::Subscribed { .. })).await;
            for i in 0..55 {
                let content = if i == 0 { "where do <narwhals> live? [[mock tokens=1]]".to_string() } else { format!("filler {i} [[mock tokens=1]]") };
                ws.send(json!({"type": "send", "session_id": long, "content": content})).await;
                ws.recv_until(common::is_done).await;
            }
            // Another user's narwhals are never found.
            let (other, _) = h.server.register("tom").await;
            let theirs = h.server.create_session(&other).await.id;
            let mut ws = h.server.ws(&other).await;
            ws.send(json!({"type": "send", "session_id": theirs, "content": "narwhals everywhere [[mock tokens=1]]"})).await;
            ws.recv_until(common::is_done).await;
            // A short session of the user's, open when the search starts.
            h.tab(a).send("a note on pelicans and narwhals [[mock echo]]").await?;
            h.tab(a).wait_settled(2).await?;
            let short = h.tab(a).session_id().await?;

            h.tab(a).element("#composer").await?.send_keys(Key::Control + "k").await?;
            let input = h.tab(a).element("#search-input").await?;
            h.tab(a).wait("the input focused", "return document.activeElement.id === 'search-input'").await?;
            input.send_keys("narwhal").await?;
            h.tab(a).wait_text("#search-status", "3 messages found").await?;
            let snippets = h.tab(a).js("return [...document.querySelectorAll('#search-results .snippet')].map(e => e.innerHTML)").await?;
            let snippets: Vec<String> = serde_json::from_value(snippets)?;
            assert_eq!(snippets.len(), 3, "{snippets:?}");
            assert!(snippets.iter().any(|s| s.starts_with("where do &lt;<mark>narwhals</mark>&gt; live?")), "marked, the rest text: {snippets:?}");
            assert!(!snippets.iter().any(|s| s.contains("everywhere")), "another user's: {snippets:?}");
            let findings = accessibility_findings(h.tab(a), &axe).await?;
            assert!(findings.is_empty(), "the search box: {findings:#?}");
            // Escape closes it, and the reply that is not streaming is left alone.
            input.send_keys(Key::Escape).await?;
            h.tab(a).wait_gone("#search").await?;
            assert_eq!(h.tab(a).session_id().await?, short);

            // Reopened from the list's button, arrows reach the long session's result.
            h.tab(a).click("#open-search").await?;
            let input = h.tab(a).element("#search-input").await?;
            input.send_keys("live narwhals").await?;
            h.tab(a).wait_text("#search-status", "1 message found").await?;
            input.send_keys(Key::Down).await?;
            h.tab(a).wait("the result focused", "return document.activeElement.classList.contains('search-result')").await?;
            h.tab(a).driver.active_element().await?.send_keys(Key::Enter).await?;
            h.tab(a).wait_gone("#search").await?;
            h.tab(a).wait("the long session", &format!("return location.pathname === '/c/{long}'")).await?;
            let found = "const e = document.querySelector('article.message.found'); if (!e) return false; \
                         const m = document.querySelector('#messages').getBoundingClientRect(); const r = e.getBoundingClientRect(); \
                         return e.innerText.includes('where do <narwhals> live?') && r.bottom > m.top && r.top < m.bottom \
                             && document.activeElement === e";
            h.tab(a).wait("the message found, in view and focused", found).await?;
            assert_eq!(h.tab(a).count("#messages article.message").await?, 110, "older messages loaded to reach it");
            Ok(())
        })
        .await;
}

/// The Export menu saves the open session as Markdown, text or JSON (the file the browser
/// is handed is read back here), and the session prints: Chromium's PDF of the page holds
/// the conversation and none of the controls around it.
#[tokio::test]
async fn a_session_exports_as_files_and_prints_as_pdf() {
    let _one = ONE_AT_A_TIME.lock().await;
    let harness = Harness::start("export", &[]).await.expect("harness");
    harness
        .run(async |h| {
            let a = h.open("a").await?;
            h.tab(a).register("una").await?;
            h.tab(a).send("Which rivers cross Lyon? [[mock echo]]").await?;
            h.tab(a).wait_settled(2).await?;
            // What the page hands the browser to save is kept for the test to read.
            h.tab(a)
                .js("window.__saved = []; const blobs = {}; const create = URL.createObjectURL; \
                     URL.createObjectURL = function (b) { const u = create.call(URL, b); blobs[u] = b; return u; }; \
                     HTMLAnchorElement.prototype.click = function () { \
                     const name = this.download; blobs[this.href].text().then(t => window.__saved.push([name, t])); }; \
                     return true")
                .await?;
            for (format, expected) in [
                ("md", "```text\nWhich rivers cross Lyon? [[mock echo]]\n```"),
                ("txt", "] You:\nWhich rivers cross Lyon?"),
                ("json", "\"content\": \"Which rivers cross Lyon? [[mock echo]]\""),
            ] {
                h.tab(a).click("#export summary").await?;
                h.tab(a).click(&format!("#export-{format}")).await?;
                h.tab(a).wait("the file", "return window.__saved.length === 1").await?;
                let saved = h.tab(a).js("return window.__saved.pop()").await?;
                let (name, text) = (saved[0].as_str().unwrap_or_default(), saved[1].as_str().unwrap_or_default());
                assert!(
                    name.starts_with("which-rivers-cross-lyon-mock-echo-") && name.ends_with(&format!(".{format}")),
                    "{name}"
                );
                assert!(text.contains(expected), "{format}: {text}");
                assert_eq!(
                    h.tab(a).js("return document.querySelector('#export').open").await?,
                    json!(false),
                    "the menu closes"
                );
            }

            let pdf = h.tab(a).driver.print_page(thirtyfour::common::print::PrintParameters::default()).await?;
            assert!(pdf.starts_with(b"%PDF"), "a PDF");
            let path = std::env::temp_dir().join(format!("relay-export-{}.pdf", std::process::id()));
            std::fs::write(&path, &pdf)?;
            let out = std::process::Command::new("pdftotext").arg(&path).arg("-").output()?;
            let _ = std::fs::remove_file(&path);
            anyhow::ensure!(out.status.success(), "pdftotext (poppler-utils; scripts/test.sh installs it) failed");
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("Which rivers cross Lyon?"), "the conversation is printed: {text}");
            for control in ["New chat", "Export", "Send"] {
                assert!(!text.contains(control), "{control:?} is not printed: {text}");
            }
            Ok(())
        })
        .await;
}

/// The Share menu makes a live link; a browser without a login opens it and watches a
/// reply being written, read-only (no composer, nothing to act with); the owner sees one
/// watching; stopping the share ends the viewer's page at once, and the link then opens
/// nothing. The viewer's page passes axe.
#[tokio::test]
async fn a_shared_link_shows_the_chat_live_to_a_browser_without_a_login() {
    let _one = ONE_AT_A_TIME.lock().await;
    let harness = Harness::start("share", &[]).await.expect("harness");
    let axe = axe_source();
    harness
        .run(async |h| {
            let a = h.open("a").await?;
            h.tab(a).register("vera").await?;
            h.tab(a).send("What is a fjord? [[mock echo]]").await?;
            h.tab(a).wait_settled(2).await?;
            let url = h.tab(a).create_share_link().await?;
            assert!(url.starts_with(&format!("{}/s/", h.server.url(""))), "{url}");
            h.tab(a).wait_text("#share-status", "Nobody is watching now").await?;

            // The page a link opens is not for search engines or caches, and sends no referrer.
            let page = h.server.http.get(&url).send().await?;
            assert_eq!(page.status(), 200);
            assert_eq!(page.headers()["x-robots-tag"], "noindex, nofollow");
            assert_eq!(page.headers()["referrer-policy"], "no-referrer");
            assert_eq!(page.headers()["cache-control"], "no-store");
            let v = h.open_at("viewer", url.clone()).await?;
            h.tab(v).wait_text("#shared-live", "Live").await?;
            h.tab(v).wait_text("#messages", "What is a fjord?").await?;
            assert_eq!(h.tab(v).count("textarea, #composer, #share, #export, #stop").await?, 0, "read-only");
            assert_eq!(h.tab(v).js("return localStorage.getItem('relay.auth')").await?, json!(null), "no login");
            h.tab(a).wait_text("#share-viewers", "1 watching").await?;
            h.tab(a).wait_text("#share-status", "1 person is watching now").await?;
            let findings = accessibility_findings(h.tab(v), &axe).await?;
            assert!(findings.is_empty(), "the shared page: {findings:#?}");

            // A reply seen while it is written: part of it on the viewer's page before its end.
            h.tab(a).send(&slow(40, 20)).await?;
            let reply = "const all = document.querySelectorAll('#messages article.message'); \
                         return all.length === 4 ? all[3].querySelector('.content').innerText : ''";
            let partial = h
                .tab(v)
                .wait(
                    "part of the reply",
                    &format!("const t = (() => {{ {reply} }})(); return t.includes('word3') ? t : false"),
                )
                .await?;
            assert!(!partial.as_str().unwrap_or_default().contains("word40"), "seen before it is whole: {partial}");
            assert_eq!(h.tab(v).count("#typing").await?, 1, "still being written");
            h.tab(v)
                .wait("the whole reply", &format!("const t = (() => {{ {reply} }})(); return t.includes('word40')"))
                .await?;
            h.tab(v).wait_gone("#typing").await?;

            h.tab(a).click("#share-stop").await?;
            h.tab(v).wait_text("#shared-ended", "The owner stopped sharing this conversation.").await?;
            h.tab(v).wait_text("#shared-live", "Ended").await?;
            assert!(h.tab(v).text("#messages").await?.contains("word40"), "what was shown stays");
            h.tab(a)
                .wait(
                    "the menu says so",
                    "return document.querySelector('#share summary').innerText.trim() === 'Share'",
                )
                .await?;
            h.tab(v).driver.goto(url).await?;
            h.tab(v).wait_text("#shared-ended", "This link does not open anything").await?;
            Ok(())
        })
        .await;
}

/// A link whose every place is taken (CHAT_SHARE_MAX_VIEWERS) still shows the conversation
/// as it was, says why it is not live, and joins live by itself once a place frees.
#[tokio::test]
async fn a_full_share_link_shows_the_chat_and_joins_live_when_a_place_frees() {
    let _one = ONE_AT_A_TIME.lock().await;
    let harness = Harness::start("share-full", &[("CHAT_SHARE_MAX_VIEWERS", "1")]).await.expect("harness");
    harness
        .run(async |h| {
            let a = h.open("a").await?;
            h.tab(a).register("wren").await?;
            h.tab(a).send("Where do puffins nest? [[mock tokens=3]]").await?;
            h.tab(a).wait_settled(2).await?;
            let url = h.tab(a).create_share_link().await?;
            let first = h.open_at("first", url.clone()).await?;
            h.tab(first).wait_text("#shared-live", "Live").await?;
            let second = h.open_at("second", url.clone()).await?;
            h.tab(second).wait_text("#shared-ended", "cannot be followed live right now").await?;
            h.tab(second).wait_text("#messages", "Where do puffins nest?").await?;
            assert_eq!(h.tab(second).text("#shared-live").await?, "Not live");

            // The first viewer leaves; its place frees once the server sees it gone (at the
            // stream's next keep-alive, within 15 s), and the second joins at its next try.
            h.tab(first).driver.goto("about:blank").await?;
            let mut joined = false;
            for _ in 0..3 {
                if h.tab(second).wait_text("#shared-live", "Live").await.is_ok() {
                    joined = true;
                    break;
                }
            }
            assert!(joined, "the second viewer never joined live");
            h.tab(second).wait_gone("#shared-ended").await?;
            h.tab(a).send("And in winter? [[mock tokens=3]]").await?;
            h.tab(second).wait_text("#messages", "And in winter?").await?;
            Ok(())
        })
        .await;
}

/// A chat's settings choose its model (each reply names the model that wrote it, and the
/// provider is asked for it) and its own instructions (the model receives them); replies
/// are rated with thumbs; `/` in the composer offers saved prompts, saves a new one, and
/// inserts the one chosen. The screen passes axe with the settings and the prompts open.
#[tokio::test]
async fn models_instructions_ratings_and_saved_prompts_in_a_chat() {
    let _one = ONE_AT_A_TIME.lock().await;
    let models = r#"[{"name": "alpha", "label": "Alpha"}, {"name": "beta", "label": "Beta"}]"#;
    let harness = Harness::start("models", &[("CHAT_MODELS", models)]).await.expect("harness");
    let axe = axe_source();
    harness
        .run(async |h| {
            let a = h.open("a").await?;
            h.tab(a).register("ula").await?;
            h.tab(a).send("hello [[mock tokens=3]]").await?;
            h.tab(a).wait_settled(2).await?;
            h.tab(a).wait_text("#messages article.message.assistant .model-name", "alpha").await?;

            h.tab(a).click("#chat-settings summary").await?;
            h.tab(a).choose("#model-picker", "beta").await?;
            h.tab(a).wait("the model changed", "return document.querySelector('#chat-settings summary').innerText.trim() === 'Beta'").await?;
            // Changed elsewhere (here over REST), the model shows in the picker too, even the
            // option this tab chose by hand (whose `selected` attribute no longer moves the
            // choice once clicked): the picker follows the session, not the last click.
            let token = token_of(h.tab(a)).await?;
            let sid = h.tab(a).js("return location.pathname.split('/').pop()").await?;
            let path = format!("/api/v1/chat/sessions/{}", sid.as_str().unwrap_or_default());
            for (model, label) in [("alpha", "Alpha"), ("beta", "Beta")] {
                let change = h.server.http.patch(h.server.url(&path)).bearer_auth(&token).json(&json!({"model": model}));
                assert_eq!(change.send().await?.status(), 200);
                let shown = format!(
                    "return document.querySelector('#model-picker').value === '{model}' && \
                     document.querySelector('#chat-settings summary').innerText.trim() === '{label}'"
                );
                h.tab(a).wait("the picker follows", &shown).await?;
            }
            h.tab(a).element("#system-prompt").await?.send_keys("Answer in French.").await?;
            h.tab(a).click("#save-system-prompt").await?;
            h.tab(a).wait_text("#system-prompt-saved", "Saved").await?;
            let findings = accessibility_findings(h.tab(a), &axe).await?;
            assert!(findings.is_empty(), "the chat settings: {findings:#?}");
            h.tab(a).click("#chat-settings summary").await?;

            h.tab(a).send("and now? [[mock tokens=3]]").await?;
            h.tab(a).wait_settled(4).await?;
            let last_model = "const m = document.querySelectorAll('#messages article.message.assistant .model-name'); \
                              return m.length === 2 ? m[1].innerText : false";
            assert_eq!(h.tab(a).wait("the second reply's model", last_model).await?, json!("beta"));
            let asked = h.server.mock.stats().last_request.expect("the model was asked");
            assert_eq!((asked["model"].as_str(), asked["messages"][0]["content"].as_str()), (Some("beta"), Some("Answer in French.")));

            // Thumbs up on the last reply: pressed once the server stored it.
            h.tab(a).js("document.querySelectorAll('#messages .rate-up')[1].click(); return true").await?;
            h.tab(a).wait("the rating stored", "const b = document.querySelectorAll('#messages .rate-up')[1]; return b.getAttribute('aria-pressed') === 'true'").await?;

            // "/" offers the saved prompts; one is saved, then found and inserted.
            let composer = h.tab(a).element("#composer").await?;
            composer.send_keys("/").await?;
            h.tab(a).wait_text("#prompt-picker", "No saved prompt matches").await?;
            h.tab(a).element("#prompt-new-title").await?.send_keys("Greet").await?;
            h.tab(a).element("#prompt-new-content").await?.send_keys("Say hello in five languages").await?;
            h.tab(a).click("#prompt-save").await?;
            h.tab(a).wait_text("#prompt-options", "Greet").await?;
            let findings = accessibility_findings(h.tab(a), &axe).await?;
            assert!(findings.is_empty(), "the saved prompts: {findings:#?}");
            composer.send_keys("gr").await?;
            h.tab(a).wait("one match, highlighted", "const o = document.querySelectorAll('#prompt-options [role=option]'); return o.length === 1 && o[0].getAttribute('aria-selected') === 'true'").await?;
            composer.send_keys(Key::Enter).await?;
            h.tab(a).wait("the prompt inserted", "return document.querySelector('#composer').value === 'Say hello in five languages'").await?;
            h.tab(a).wait_gone("#prompt-picker").await?;
            // Esc closes the list and keeps the text, which stays a message to send: the
            // list stays closed as it is typed on.
            h.tab(a).fill_composer("/gre").await?;
            h.tab(a).wait_text("#prompt-options", "Greet").await?;
            h.tab(a).element("#composer").await?.send_keys(Key::Escape).await?;
            h.tab(a).wait_gone("#prompt-picker").await?;
            assert_eq!(h.tab(a).count("#messages article.message.user").await?, 2, "nothing was sent");
            h.tab(a).element("#composer").await?.send_keys("et [[mock tokens=2]]").await?;
            assert_eq!(h.tab(a).js("return document.querySelector('#composer').value").await?, json!("/greet [[mock tokens=2]]"));
            assert_eq!(h.tab(a).count("#prompt-picker").await?, 0, "closed while the text is typed on");
            h.tab(a).element("#composer").await?.send_keys(Key::Enter).await?;
            h.tab(a).wait_settled(6).await?;
            assert!(h.tab(a).messages().await?[4].1.starts_with("/greet"), "sent as typed");
            // Typed again from the start, the list opens again, also past where it was closed.
            h.tab(a).element("#composer").await?.send_keys("/gre").await?;
            h.tab(a).wait_text("#prompt-options", "Greet").await?;
            h.tab(a).element("#composer").await?.send_keys(Key::Escape).await?;
            h.tab(a).wait_gone("#prompt-picker").await?;
            // Deleted from the picker, it is gone for good.
            h.tab(a).fill_composer("/").await?;
            h.tab(a).wait_text("#prompt-options", "Greet").await?;
            h.tab(a).click("#prompt-delete").await?;
            h.tab(a).wait_text("#prompt-picker", "No saved prompt matches").await?;
            let token = token_of(h.tab(a)).await?;
            let (_, prompts) = h.server.get(&token, "/api/v1/prompts").await;
            assert_eq!(prompts, json!({"prompts": []}));
            Ok(())
        })
        .await;
}

/// A reply too long for one batch of groups (over a thousand blocks) shows every block once
/// and in order while it streams in: the same blocks, cut the same, with the same words, as
/// the stored reply drawn at once after a reload. Its groups far off screen are unloaded to
/// their words (find-in-page still finds them), are drawn again when scrolled to, and all
/// before the page is printed; the reopened chat is at its end.
#[tokio::test]
async fn a_long_reply_shows_every_block_once_in_order() {
    let _one = ONE_AT_A_TIME.lock().await;
    let harness = Harness::start("long_reply", &[("CHAT_MAX_TOKENS", "100000")]).await.expect("harness");
    harness
        .run(async |h| {
            let a = h.open("a").await?;
            h.tab(a).register("lon").await?;
            h.tab(a).send("A long one [[mock demo tokens=40000 tps=4000]]").await?;
            h.tab(a).element("#streaming").await?;
            h.tab(a).wait("the reply to end", "return !document.querySelector('#streaming')").await?;
            // Each group as its words without spaces (a drawn group's code bars left out), how
            // many blocks it holds, and whether they are drawn.
            let groups = "const r = [...document.querySelectorAll('#messages article.assistant')].pop(); \
                          return [...r.querySelectorAll('.md-group')].map(g => { \
                            const c = g.cloneNode(true); c.querySelectorAll('.code-bar').forEach(b => b.remove()); \
                            const drawn = !g.classList.contains('unloaded'); \
                            const blocks = drawn ? g.querySelectorAll(':scope > .md-block').length : Number(g.dataset.blocks); \
                            return [c.textContent.replace(/\\s+/g, ''), blocks, drawn]; })";
            let streamed = h.tab(a).js(groups).await?;
            let total = streamed.as_array().map(Vec::len).unwrap_or_default();
            h.tab(a).driver.refresh().await?;
            h.tab(a)
                .wait(
                    "the stored reply's groups",
                    &format!("return document.querySelectorAll('#messages article.assistant .md-group').length === {total}"),
                )
                .await?;
            // The groups near the end are drawn as the page is laid out; the list stays at its end.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let at_end = "const l = document.querySelector('#messages'); return l.scrollTop + l.clientHeight >= l.scrollHeight - 2";
            anyhow::ensure!(h.tab(a).js(at_end).await? == json!(true), "the reopened chat is not at its end");
            let stored = h.tab(a).js(groups).await?;
            let cut = |v: &Value| -> Vec<(String, u64)> {
                v.as_array()
                    .into_iter()
                    .flatten()
                    .map(|g| (g[0].as_str().unwrap_or_default().to_owned(), g[1].as_u64().unwrap_or_default()))
                    .collect()
            };
            let drawn = |v: &Value| v.as_array().into_iter().flatten().filter(|g| g[2] == json!(true)).count();
            println!("{total} groups; drawn {} streamed, {} stored", drawn(&streamed), drawn(&stored));
            anyhow::ensure!(cut(&streamed) == cut(&stored), "the streamed blocks differ from the stored reply's");
            anyhow::ensure!(total > 32, "{total} groups: too short a reply to cross a batch");
            let counts: Vec<u64> = cut(&stored).into_iter().map(|(_, n)| n).collect();
            anyhow::ensure!(counts.iter().all(|&c| (1..=32).contains(&c)), "groups of 1 to 32 blocks: {counts:?}");
            for (when, v) in [("streamed", &streamed), ("stored", &stored)] {
                anyhow::ensure!((1..total / 2).contains(&drawn(v)), "{when}: {} of {total} groups drawn", drawn(v));
            }
            // Scrolled to its start, the reply's first group is drawn again, as it was.
            h.tab(a).js("document.querySelector('#messages article.assistant .md-group').scrollIntoView()").await?;
            h.tab(a)
                .wait(
                    "the first group drawn again",
                    "const g = document.querySelector('#messages article.assistant .md-group'); \
                     return !g.classList.contains('unloaded') && g.querySelectorAll(':scope > .md-block').length === 32",
                )
                .await?;
            let again = h.tab(a).js(groups).await?;
            anyhow::ensure!(cut(&again) == cut(&stored), "the blocks changed as groups were drawn again");
            // Before the page is printed, every group is drawn.
            h.tab(a).js("window.dispatchEvent(new Event('beforeprint'))").await?;
            h.tab(a).wait("every group drawn to print", "return !document.querySelector('.md-group.unloaded')").await?;
            let printed = h.tab(a).js(groups).await?;
            anyhow::ensure!(cut(&printed) == cut(&stored), "the blocks changed as the reply was drawn to print");
            Ok(())
        })
        .await;
}
