// The mailpit-api npm client, a Mailpit client written by others, against fakesmtp.
//
//   node mailpit_client_check.mjs HTTP_URL
//
// Starts nothing and sends nothing: run_mailpit_npm.py has started fakesmtp and sent
// it, oldest first, "Invoice 1" (to alice@example.org), "Quarterly report" (from Ann
// Example to Bob, text, HTML, an inline logo.png and an attached report.pdf) and
// "Invoice 2" (to carol@example.org). Each step uses the client's own calls, as its
// README shows them; the steps run in order and later ones delete messages.

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { test } from "node:test";
import { MailpitClient } from "mailpit-api";

const url = process.argv[2];
assert.ok(url, "usage: node mailpit_client_check.mjs HTTP_URL");
const mailpit = new MailpitClient(url);

async function reportId() {
  const found = await mailpit.searchMessages({ query: 'subject:"quarterly report"' });
  assert.equal(found.messages_count, 1);
  return found.messages[0].ID;
}

test("listMessages: summaries newest first", async () => {
  const list = await mailpit.listMessages();
  assert.equal(list.total, 3);
  assert.equal(list.messages_count, 3);
  assert.equal(list.unread, 3);
  assert.deepEqual(
    list.messages.map((m) => m.Subject),
    ["Invoice 2", "Quarterly report", "Invoice 1"],
  );
  const report = list.messages[1];
  assert.deepEqual(report.From, { Name: "Ann Example", Address: "ann@example.com" });
  assert.deepEqual(report.To, [{ Name: "Bob", Address: "bob@example.org" }]);
  assert.equal(report.Attachments, 1);
  assert.equal(report.Read, false);
  assert.match(report.Snippet, /^Hello Bob/);
  assert.ok(!Number.isNaN(Date.parse(report.Created)));
  const page = await mailpit.listMessages(1, 1);
  assert.deepEqual(
    page.messages.map((m) => m.Subject),
    ["Quarterly report"],
  );
});

test("getMessageSummary: one message, and latest", async () => {
  const message = await mailpit.getMessageSummary(await reportId());
  assert.equal(message.Subject, "Quarterly report");
  assert.equal(message.MessageID, "quarterly-report@example.com");
  assert.match(message.Text, /^Hello Bob, the report is attached\./);
  assert.match(message.HTML, /<img src="cid:logo@example.com">/);
  assert.deepEqual(
    message.Attachments.map((a) => [a.FileName, a.ContentType]),
    [["report.pdf", "application/pdf"]],
  );
  assert.deepEqual(
    message.Inline.map((a) => [a.FileName, a.ContentID]),
    [["logo.png", "logo@example.com"]],
  );
  const latest = await mailpit.getMessageSummary();
  assert.equal(latest.Subject, "Invoice 2");
});

test("getMessageHeaders: Go's header names, values as sent", async () => {
  const headers = await mailpit.getMessageHeaders(await reportId());
  assert.deepEqual(headers.Subject, ["Quarterly report"]);
  assert.deepEqual(headers["Message-Id"], ["<quarterly-report@example.com>"]);
  assert.deepEqual(headers.To, ["Bob <bob@example.org>"]);
});

test("getMessageAttachment: the attachment's bytes and type", async () => {
  const id = await reportId();
  const message = await mailpit.getMessageSummary(id);
  const [pdf] = message.Attachments;
  const blob = await mailpit.getMessageAttachment(id, pdf.PartID);
  assert.equal(blob.type, "application/pdf");
  const bytes = Buffer.from(await blob.arrayBuffer());
  assert.equal(bytes.length, pdf.Size);
  assert.equal(createHash("sha256").update(bytes).digest("hex"), pdf.Checksums.SHA256);
  assert.equal(bytes.subarray(0, 5).toString(), "%PDF-");
  const [logo] = message.Inline;
  const image = await mailpit.getMessageAttachment(id, logo.PartID);
  assert.equal(image.type, "image/png");
  assert.equal(image.size, logo.Size);
});

test("getMessageSource: the raw message", async () => {
  const source = await mailpit.getMessageSource(await reportId());
  assert.match(source, /^From: Ann Example <ann@example.com>\r\n/m);
  assert.match(source, /Subject: Quarterly report\r\n/);
});

test("searchMessages and waitForMessage", async () => {
  const invoices = await mailpit.searchMessages({ query: "subject:invoice" });
  assert.equal(invoices.messages_count, 2);
  assert.deepEqual(
    invoices.messages.map((m) => m.Subject),
    ["Invoice 2", "Invoice 1"],
  );
  const notToCarol = await mailpit.searchMessages({ query: "subject:invoice -to:carol" });
  assert.deepEqual(
    notToCarol.messages.map((m) => m.Subject),
    ["Invoice 1"],
  );
  const found = await mailpit.waitForMessage({ query: "to:bob has:attachment" });
  assert.equal(found.Subject, "Quarterly report");
  const counted = await mailpit.waitForMessages({ query: "subject:invoice", count: 2 });
  assert.equal(counted.messages_count, 2);
});

test("setReadStatus: read and unread", async () => {
  await mailpit.setReadStatus({ Read: false });
  const invoice1 = (await mailpit.searchMessages({ query: '"Invoice 1"' })).messages[0].ID;
  assert.equal(await mailpit.setReadStatus({ IDs: [invoice1], Read: true }), "ok");
  const read = await mailpit.searchMessages({ query: "is:read" });
  assert.deepEqual(
    read.messages.map((m) => m.ID),
    [invoice1],
  );
  assert.equal((await mailpit.listMessages()).unread, 2);
});

test("deleteMessages with IDs: those only", async () => {
  const invoice1 = (await mailpit.searchMessages({ query: '"Invoice 1"' })).messages[0].ID;
  assert.equal(await mailpit.deleteMessages({ IDs: [invoice1] }), "ok");
  const list = await mailpit.listMessages();
  assert.deepEqual(
    list.messages.map((m) => m.Subject),
    ["Invoice 2", "Quarterly report"],
  );
});

test("deleteMessagesBySearch: the matches only", async () => {
  assert.equal(await mailpit.deleteMessagesBySearch({ query: "subject:invoice" }), "ok");
  const list = await mailpit.listMessages();
  assert.deepEqual(
    list.messages.map((m) => m.Subject),
    ["Quarterly report"],
  );
});

test("deleteMessages without IDs: all; then latest is a 404", async () => {
  assert.equal(await mailpit.deleteMessages(), "ok");
  assert.equal((await mailpit.listMessages()).total, 0);
  await assert.rejects(mailpit.getMessageSummary(), /404 .*Message not found/);
  await assert.rejects(mailpit.getMessageHeaders("no-such-id"), /404 .*404 page not found/);
});
