// courier's GraphQL explorer: GraphiQL (vendor/, see README.md) against the
// URL this page was served from, which is where courier answers POSTed
// queries. Loaded as a file of its own because the page's
// Content-Security-Policy allows no inline script.
//
// The API key: the user types it into GraphiQL's Headers tab. It goes out
// only in the Authorization header of the requests made here; it is never
// put in a URL, and never written to the browser's storage (see `storage`).
(function () {
  'use strict';

  var endpoint = window.location.pathname;

  var defaultHeaders = '{\n  "Authorization": "Bearer "\n}';

  var defaultQuery = [
    '# courier GraphQL explorer',
    '#',
    '# Type a workspace API key after "Bearer " in',
    '# the Headers tab below. The schema then loads:',
    '# completion as you type, and the Docs pane.',
    '# Run a query with Ctrl-Enter.',
    '#',
    '# The key goes only into the Authorization',
    '# header of the requests this page makes. It',
    '# is not stored: reloading the page forgets it.',
    '',
    'query Webhooks {',
    '  webhooks {',
    '    id',
    '    name',
    '    url',
    '    types',
    '    status',
    '  }',
    '}',
    '',
  ].join('\n');

  // The Authorization value among request headers (any case), trimmed;
  // '' when there is none or it holds a scheme and no key ("Bearer ").
  function authorization(headers) {
    var value = '';
    Object.keys(headers || {}).forEach(function (name) {
      if (name.toLowerCase() === 'authorization') {
        value = String(headers[name]).trim();
      }
    });
    return /\s/.test(value) ? value : '';
  }

  // A JSON POST to courier, as any GraphQL client sends it. No cookies: the
  // API authenticates by the key alone. Without a key nothing is sent:
  // courier would only answer 401 (which the browser's console reports as
  // an error), so the answer is the hint instead.
  function fetcher(params, options) {
    var given = (options && options.headers) || {};
    if (!authorization(given)) {
      return Promise.resolve({
        data: null,
        errors: [
          {
            message:
              'No API key yet: type a workspace API key (ck_...) after ' +
              'Bearer in the Headers tab.',
          },
        ],
      });
    }
    var headers = {
      'Content-Type': 'application/json',
      Accept: 'application/json',
    };
    Object.keys(given).forEach(function (name) {
      headers[name] = String(given[name]);
    });
    return fetch(endpoint, {
      method: 'POST',
      headers: headers,
      body: JSON.stringify(params),
      credentials: 'omit',
      cache: 'no-store',
    })
      .then(function (response) {
        return response.text();
      })
      .then(function (text) {
        try {
          return JSON.parse(text);
        } catch (e) {
          return text;
        }
      });
  }

  // GraphiQL keeps tabs and a query history in localStorage, and its
  // history keeps each request's headers whatever shouldPersistHeaders
  // says. Everything passes through here, and no headers are kept.
  var local = GraphiQL.createLocalStorage({ namespace: 'courier-explorer' });
  var holdsHeaders = /:(tabState|queries|favorites)$/;
  function withoutHeaders(text) {
    try {
      return JSON.stringify(JSON.parse(text), function (key, value) {
        return key === 'headers' ? undefined : value;
      });
    } catch (e) {
      return null;
    }
  }
  var storage = {
    getItem: function (key) {
      return local.getItem(key);
    },
    setItem: function (key, value) {
      if (/:headers$/.test(key)) {
        return;
      }
      if (holdsHeaders.test(key)) {
        value = withoutHeaders(value);
        if (value === null) {
          return;
        }
      }
      local.setItem(key, value);
    },
    removeItem: function (key) {
      local.removeItem(key);
    },
    clear: function () {
      local.clear();
    },
    get length() {
      return local.length;
    },
  };

  // GraphiQL loads the schema when it starts (before there is a key) and
  // again whenever its fetcher changes: a new Authorization value gets a
  // new fetcher, so the schema loads as soon as a key is typed.
  function typedAuthorization(text) {
    try {
      return authorization(JSON.parse(text || '{}'));
    } catch (e) {
      return null;
    }
  }
  var lastAuthorization = typedAuthorization(defaultHeaders);
  var pending = null;
  function onEditHeaders(text) {
    window.clearTimeout(pending);
    pending = window.setTimeout(function () {
      var value = typedAuthorization(text);
      if (value !== null && value !== lastAuthorization) {
        lastAuthorization = value;
        render();
      }
    }, 400);
  }

  var root = ReactDOM.createRoot(document.getElementById('explorer'));
  function render() {
    root.render(
      React.createElement(GraphiQL, {
        fetcher: function (params, options) {
          return fetcher(params, options);
        },
        storage: storage,
        defaultQuery: defaultQuery,
        defaultHeaders: defaultHeaders,
        defaultEditorToolsVisibility: 'headers',
        shouldPersistHeaders: false,
        showPersistHeadersSettings: false,
        onEditHeaders: onEditHeaders,
      }),
    );
  }
  render();
})();
