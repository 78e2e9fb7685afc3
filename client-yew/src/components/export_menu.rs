//! The open session's Export menu: the session as Markdown, text or JSON, or printed (the
//! browser's print dialog, where "Save as PDF" makes a PDF; the page's print stylesheet
//! leaves only the conversation).

use uuid::Uuid;
use yew::prelude::*;

use crate::ctx::Ctx;

/// Props of [`ExportMenu`].
#[derive(Properties, PartialEq)]
pub struct ExportProps {
    /// The session to export.
    pub session_id: Uuid,
}

/// The menu (a disclosure: `<details>`, so the keyboard and screen readers know it).
#[function_component(ExportMenu)]
pub fn export_menu(props: &ExportProps) -> Html {
    let ctx = use_context::<Ctx>().expect("inside the app");
    let menu = use_node_ref();
    let item = |format: &'static str, label: &'static str| {
        let (ctx, menu, session_id) = (ctx.clone(), menu.clone(), props.session_id);
        let onclick = Callback::from(move |_| {
            if let Some(menu) = menu.cast::<web_sys::HtmlDetailsElement>() {
                menu.set_open(false);
            }
            if format == "pdf" {
                if let Some(window) = web_sys::window() {
                    let _ = window.print();
                }
            } else {
                ctx.download(session_id, format);
            }
        });
        html! { <button type="button" class="link" id={format!("export-{format}")} {onclick}>{ label }</button> }
    };
    let items = [
        item("md", "Markdown (.md)"),
        item("txt", "Text (.txt)"),
        item("json", "JSON (.json)"),
        item("pdf", "Print or save as PDF"),
    ];
    html! {
        <details class="export" id="export" ref={menu}>
            <summary>{ "Export" }</summary>
            <div class="export-items">{ for items }</div>
        </details>
    }
}
